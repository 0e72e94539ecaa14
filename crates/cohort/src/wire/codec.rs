//! How job parameters and results become payload bytes.
//!
//! Tensors (`Vec<f32>`, `Vec<f64>`, ...) are written as a `u64` LE length followed by their raw little-endian bytes,
//! copied in one `memcpy` through `bytemuck` on little-endian hosts; never element by element through serde.
//! Tuples concatenate their parts. Anything else serde can handle goes through the [`Serde`] wrapper (postcard).

use serde::{de::DeserializeOwned, Serialize};

use super::WireError;

/// A value that can travel as a job's parameters or result.
///
/// Implemented for scalars, vectors of scalars, `String`, `()`, `Option<T>`, tuples of up to four payloads, and
/// [`Serde<T>`] for any serde type.
pub trait Payload: Sized + Send + 'static {
    /// Appends the encoding of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Decodes a value from the front of `input`, advancing it.
    fn decode(input: &mut &[u8]) -> Result<Self, WireError>;

    /// Encodes into a fresh buffer.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes a whole buffer, rejecting trailing bytes.
    fn from_bytes(mut bytes: &[u8]) -> Result<Self, WireError> {
        let value = Self::decode(&mut bytes)?;
        if !bytes.is_empty() {
            return Err(WireError::Malformed(format!("{} trailing bytes after payload", bytes.len())));
        }
        Ok(value)
    }
}

fn take<'a>(input: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], WireError> {
    if input.len() < n {
        return Err(WireError::Malformed(format!("payload ends inside {what}: need {n} bytes, have {}", input.len())));
    }
    let (head, tail) = input.split_at(n);
    *input = tail;
    Ok(head)
}

/// A plain number that travels as its little-endian bytes.
pub trait Scalar: bytemuck::Pod + Send + Sync + 'static {
    /// Converts a slice to little-endian bytes appended to `out`.
    fn extend_le(values: &[Self], out: &mut Vec<u8>);
    /// Reads `dst.len()` values from little-endian `bytes` (exactly `dst.len() * size_of::<Self>()` long).
    fn copy_from_le(bytes: &[u8], dst: &mut [Self]);
}

macro_rules! scalar {
    ($($t:ty),*) => {$(
        impl Scalar for $t {
            fn extend_le(values: &[Self], out: &mut Vec<u8>) {
                #[cfg(target_endian = "little")]
                out.extend_from_slice(bytemuck::cast_slice(values));
                #[cfg(target_endian = "big")]
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            fn copy_from_le(bytes: &[u8], dst: &mut [Self]) {
                #[cfg(target_endian = "little")]
                bytemuck::cast_slice_mut::<Self, u8>(dst).copy_from_slice(bytes);
                #[cfg(target_endian = "big")]
                for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(std::mem::size_of::<Self>())) {
                    *d = <$t>::from_le_bytes(c.try_into().unwrap());
                }
            }
        }

        impl Payload for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
                let bytes = take(input, std::mem::size_of::<$t>(), stringify!($t))?;
                Ok(<$t>::from_le_bytes(bytes.try_into().expect("take returned the requested length")))
            }
        }

        impl Payload for Vec<$t> {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&(self.len() as u64).to_le_bytes());
                <$t as Scalar>::extend_le(self, out);
            }
            fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
                let len = u64::decode(input)?;
                let size = std::mem::size_of::<$t>() as u64;
                let n_bytes = len.checked_mul(size).filter(|&n| n <= input.len() as u64).ok_or_else(|| {
                    WireError::Malformed(format!(
                        "vector of {len} {} claims more bytes than the {} left in the payload",
                        stringify!($t),
                        input.len()
                    ))
                })?;
                let bytes = take(input, n_bytes as usize, "vector")?;
                let mut v = vec![<$t>::default(); len as usize];
                <$t as Scalar>::copy_from_le(bytes, &mut v);
                Ok(v)
            }
        }
    )*};
}
scalar!(f32, f64, u8, u16, u32, u64, i32, i64);

/// Decodes a little-endian byte buffer into a vector of scalars (length = `bytes.len() / size_of::<T>()`).
pub fn scalars_from_le<T: Scalar + Default>(bytes: &[u8]) -> Result<Vec<T>, WireError> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size) {
        return Err(WireError::Malformed(format!("{} bytes is not a whole number of {size}-byte values", bytes.len())));
    }
    let mut v = vec![T::default(); bytes.len() / size];
    T::copy_from_le(bytes, &mut v);
    Ok(v)
}

impl Payload for () {
    fn encode(&self, _out: &mut Vec<u8>) {}
    fn decode(_input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(())
    }
}

impl Payload for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        match u8::decode(input)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(WireError::Malformed(format!("bool byte {b}"))),
        }
    }
}

impl Payload for String {
    fn encode(&self, out: &mut Vec<u8>) {
        self.as_bytes().to_vec().encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        String::from_utf8(Vec::<u8>::decode(input)?).map_err(|e| WireError::Malformed(format!("string: {e}")))
    }
}

impl<T: Payload> Payload for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.encode(out);
            }
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(if bool::decode(input)? { Some(T::decode(input)?) } else { None })
    }
}

macro_rules! tuple {
    ($($name:ident),+) => {
        impl<$($name: Payload),+> Payload for ($($name,)+) {
            #[allow(non_snake_case)]
            fn encode(&self, out: &mut Vec<u8>) {
                let ($($name,)+) = self;
                $($name.encode(out);)+
            }
            fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
                Ok(($($name::decode(input)?,)+))
            }
        }
    };
}
tuple!(A);
tuple!(A, B);
tuple!(A, B, C);
tuple!(A, B, C, D);

/// Wraps any serde type so it can be a [`Payload`] (postcard-encoded, `u64` length prefix).
///
/// Use it for small structured values (configuration, counters); put large numeric arrays in `Vec<f32>`/`Vec<f64>`
/// fields of a tuple instead so they travel as raw bytes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Serde<T>(pub T);

impl<T: Serialize + DeserializeOwned + Send + 'static> Payload for Serde<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        let bytes = postcard::to_allocvec(&self.0).expect("postcard cannot fail on serde types that serialize");
        bytes.encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        let bytes = Vec::<u8>::decode(input)?;
        postcard::from_bytes(&bytes).map(Serde).map_err(|e| WireError::Malformed(format!("serde payload: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Payload + PartialEq + std::fmt::Debug>(v: T) {
        let bytes = v.to_bytes();
        assert_eq!(T::from_bytes(&bytes).unwrap(), v);
        for cut in 0..bytes.len() {
            assert!(T::from_bytes(&bytes[..cut]).is_err(), "prefix of {cut} bytes decoded");
        }
    }

    #[test]
    fn values_round_trip_and_truncations_fail() {
        round_trip(3.5f64);
        round_trip(vec![1.0f32, -2.5, f32::MAX]);
        round_trip(vec![0.1f64; 33]);
        round_trip((7u64, vec![1.0f64, 2.0], String::from("héllo")));
        round_trip(Some((1u32, false)));
        round_trip(Serde(vec![(1u8, String::from("a"))]));
    }

    #[test]
    fn tensors_are_raw_little_endian() {
        let bytes = vec![1.0f32, 2.0].to_bytes();
        assert_eq!(&bytes[..8], &2u64.to_le_bytes());
        assert_eq!(&bytes[8..12], &1.0f32.to_le_bytes());
        assert_eq!(&bytes[12..], &2.0f32.to_le_bytes());
    }

    #[test]
    fn absurd_vector_length_is_an_error() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 8]);
        assert!(Vec::<f64>::from_bytes(&bytes).is_err());
        assert!(<()>::from_bytes(&[1]).is_err());
    }
}
