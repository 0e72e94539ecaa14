//! Slurm's compressed host lists (`SLURM_JOB_NODELIST=node[01-03,7],gpu-[1-2]-a,login1`): expansion into host
//! names, in Slurm's order.
//!
//! A list is a comma-separated sequence of names; each name may hold bracketed ranges (`[01-03,7]`), and a name
//! with several brackets (`rack[1-2]-n[1-2]`) is their product, the rightmost bracket varying fastest. A range keeps
//! the zero padding of its lower bound (`[08-10]` is `08 09 10`).

/// Most host names one list may expand to; a larger list is an error rather than a memory blow-up.
pub const MAX_HOSTS: usize = 1 << 20;

/// Expands a Slurm host list into host names. The error says what is wrong with the text.
pub fn expand(list: &str) -> Result<Vec<String>, String> {
    let list = list.trim();
    if list.is_empty() {
        return Err("the host list is empty".into());
    }
    let mut hosts = Vec::new();
    for item in split_top_level(list)? {
        if item.is_empty() {
            return Err(format!("empty host name in {list:?} (two commas in a row?)"));
        }
        expand_one(item, &mut hosts)?;
    }
    Ok(hosts)
}

/// The first host of a list, without expanding the rest (what a launcher needs to find rank 0's node).
pub fn first(list: &str) -> Result<String, String> {
    let list = list.trim();
    let item = split_top_level(list)?.into_iter().next().filter(|s| !s.is_empty()).ok_or("the host list is empty")?;
    let mut one = Vec::new();
    expand_one(item, &mut one)?;
    one.into_iter().next().ok_or_else(|| format!("{item:?} names no host"))
}

/// Splits at commas outside brackets.
fn split_top_level(list: &str) -> Result<Vec<&str>, String> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            '[' => return Err(format!("nested '[' in {list:?}")),
            ']' if depth == 1 => depth = 0,
            ']' => return Err(format!("']' without '[' in {list:?}")),
            ',' if depth == 0 => {
                items.push(list[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unclosed '[' in {list:?}"));
    }
    items.push(list[start..].trim());
    Ok(items)
}

/// Expands one name with any number of bracketed ranges, appending to `out`.
fn expand_one(item: &str, out: &mut Vec<String>) -> Result<(), String> {
    // Alternate literal parts and bracket contents: "rack[1-2]-n[3]" → ["rack", "1-2", "-n", "3", ""].
    let mut literals = Vec::new();
    let mut ranges = Vec::new();
    let mut rest = item;
    while let Some(open) = rest.find('[') {
        let close = rest[open..].find(']').map(|c| open + c).ok_or_else(|| format!("unclosed '[' in {item:?}"))?;
        literals.push(&rest[..open]);
        ranges.push(expand_range(&rest[open + 1..close], item)?);
        rest = &rest[close + 1..];
    }
    literals.push(rest);
    if literals.iter().any(|l| l.chars().any(|c| c.is_whitespace() || c == ']')) {
        return Err(format!("{item:?} is not a host name"));
    }
    let total = ranges.iter().try_fold(1usize, |n, r| n.checked_mul(r.len()).filter(|&t| t <= MAX_HOSTS));
    match total {
        Some(n) if out.len() + n <= MAX_HOSTS => {}
        _ => return Err(format!("{item:?} expands to more than {MAX_HOSTS} hosts")),
    }
    // Odometer over the ranges, rightmost fastest.
    let mut index = vec![0usize; ranges.len()];
    loop {
        let mut name = String::from(literals[0]);
        for (k, r) in ranges.iter().enumerate() {
            name.push_str(&r[index[k]]);
            name.push_str(literals[k + 1]);
        }
        out.push(name);
        let mut k = ranges.len();
        loop {
            if k == 0 {
                return Ok(());
            }
            k -= 1;
            index[k] += 1;
            if index[k] < ranges[k].len() {
                break;
            }
            index[k] = 0;
        }
    }
}

/// Expands the inside of one bracket, `01-03,7`, into its numbers as text.
fn expand_range(inner: &str, item: &str) -> Result<Vec<String>, String> {
    let mut values = Vec::new();
    for part in inner.split(',') {
        let part = part.trim();
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let number = |s: &str| -> Result<u64, String> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{part:?} in {item:?} is not a number or a range like 01-04"));
            }
            s.parse::<u64>().map_err(|_| format!("{s:?} in {item:?} is too large"))
        };
        let (a, b) = (number(lo)?, number(hi)?);
        if a > b {
            return Err(format!("the range {part:?} in {item:?} runs backwards"));
        }
        if b - a >= MAX_HOSTS as u64 || values.len() + (b - a) as usize >= MAX_HOSTS {
            return Err(format!("{item:?} expands to more than {MAX_HOSTS} hosts"));
        }
        let width = lo.len();
        values.extend((a..=b).map(|v| format!("{v:0width$}")));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_expand_in_slurm_order() {
        for (list, hosts) in [
            ("vm", vec!["vm"]),
            ("node[1-3]", vec!["node1", "node2", "node3"]),
            ("node[01-03,07]", vec!["node01", "node02", "node03", "node07"]),
            ("node[08-10]", vec!["node08", "node09", "node10"]),
            ("n[1-2],login,gpu-[3]-a", vec!["n1", "n2", "login", "gpu-3-a"]),
            ("rack[1-2]-n[1-2]", vec!["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
            (" a , b ", vec!["a", "b"]),
            ("node[7]", vec!["node7"]),
            ("10.0.0.[1-2]", vec!["10.0.0.1", "10.0.0.2"]),
        ] {
            assert_eq!(expand(list).unwrap(), hosts, "{list}");
            assert_eq!(first(list).unwrap(), hosts[0], "{list}");
        }
    }

    #[test]
    fn bad_lists_say_what_is_wrong() {
        for (list, needle) in [
            ("", "empty"),
            ("node[1-", "unclosed"),
            ("node1-3]", "without '['"),
            ("node[[1]]", "nested"),
            ("node[3-1]", "backwards"),
            ("node[a-b]", "not a number"),
            ("node[1,,2]", "not a number"),
            ("node[]", "not a number"),
            ("a,,b", "empty host name"),
            ("node[0-99999999]", "more than"),
            ("a[0-9999]-b[0-9999]", "more than"),
            ("node[99999999999999999999]", "too large"),
        ] {
            let e = expand(list).unwrap_err();
            assert!(e.contains(needle), "{list:?}: {e}");
        }
        assert!(first("").is_err());
    }
}
