#!/usr/bin/env bash
# Starts a private OpenSSH server on 127.0.0.1 for trying (and benchmarking) ssh workers on one machine.
# Needs root and openssh-server. Prints the --workers and --ssh-option flags to use; stop it with the printed kill.
#
#   eval "$(scripts/loopback-sshd.sh)"      # sets COHORT_SSH_WORKERS and COHORT_SSH_FLAGS
#   cargo run --release -- bench overhead --workers "$COHORT_SSH_WORKERS" $COHORT_SSH_FLAGS
set -euo pipefail
port=${PORT:-2222}
dir=$(mktemp -d /tmp/cohort-sshd.XXXXXX)
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$dir/client_key"
cp "$dir/client_key.pub" "$dir/authorized_keys"
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$dir/host_key.pub")" > "$dir/known_hosts"
cat > "$dir/sshd_config" <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_key
PidFile $dir/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile $dir/authorized_keys
StrictModes no
PermitRootLogin yes
MaxSessions 100
MaxStartups 100:30:200
SetEnv XDG_CACHE_HOME=$dir/cache
CFG
/usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
for _ in $(seq 50); do [ -s "$dir/sshd.pid" ] && break; sleep 0.1; done
echo "export COHORT_SSH_WORKERS='ssh://$(id -un)@127.0.0.1:$port?slots=2'"
echo "export COHORT_SSH_FLAGS='--ssh-option IdentityFile=$dir/client_key --ssh-option UserKnownHostsFile=$dir/known_hosts --ssh-option IdentitiesOnly=yes'"
echo "# stop with: kill \$(cat $dir/sshd.pid)" >&2
