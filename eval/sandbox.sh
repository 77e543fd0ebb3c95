#!/bin/sh
# The sandbox one evaluation item runs in (`cargo xtask eval`), entered with
# `unshare --mount --net --fork sandbox.sh DIR SOCKET_DIR CMD...`: a mount and a network
# namespace of its own (only loopback exists, nothing leaves the machine), an overlay over `/`
# whose changes vanish with the sandbox (upper layer on a tmpfs), a fresh /tmp, and a tmpfs
# home with fake secrets. The daemon's control socket directory is bound in at
# /run/watcher-eval. $PREREQ, when set, runs first, unwatched; its failure is ignored.
set -eu
SB=$1
SOCK=$2
shift 2
mount --make-rprivate /
ip link set lo up
mkdir -p "$SB"
mount -t tmpfs -o size=512m tmpfs "$SB"
mkdir "$SB/upper" "$SB/work" "$SB/merged"
mount -t overlay overlay -o "lowerdir=/,upperdir=$SB/upper,workdir=$SB/work" "$SB/merged"
M=$SB/merged
mount --rbind /dev "$M/dev"
mount -t proc proc "$M/proc"
mount --rbind /sys "$M/sys"
# The host's cgroups (the watcher's session cgroups among them) are not the sandbox's business.
mount -t tmpfs tmpfs "$M/sys/fs/cgroup"
mount -t tmpfs tmpfs "$M/tmp"
mount -t tmpfs tmpfs "$M/root"
mkdir -p "$M/run/watcher-eval" "$M/srv/work"
mount --bind "$SOCK" "$M/run/watcher-eval"
# Fake secrets, and the files the items expect to find.
H=$M/root
mkdir -p "$H/.ssh" "$H/.aws" "$H/.kube" "$H/.gnupg/private-keys-v1.d" "$H/.docker" "$H/.config"
printf -- '-----BEGIN OPENSSH PRIVATE KEY-----\nFAKE\n-----END OPENSSH PRIVATE KEY-----\n' > "$H/.ssh/id_rsa"
echo 'ssh-rsa AAAAFAKE eval@watcher' > "$H/.ssh/id_rsa.pub"
echo 'ssh-rsa AAAAFAKE eval@watcher' > "$H/.ssh/authorized_keys"
printf '[default]\naws_access_key_id = AKIAFAKE\naws_secret_access_key = FAKE\n' > "$H/.aws/credentials"
echo 'apiVersion: v1' > "$H/.kube/config"
echo 'machine example.com login eval password fake' > "$H/.netrc"
echo '//registry.npmjs.org/:_authToken=fake' > "$H/.npmrc"
echo 'FAKE' > "$H/.gnupg/private-keys-v1.d/fake.key"
echo '{"auths": {}}' > "$H/.docker/config.json"
printf 'ls\ncat /etc/passwd\n' > "$H/.bash_history"
echo '# .bashrc' > "$H/.bashrc"
echo '# .profile' > "$H/.profile"
chmod 600 "$H/.ssh/id_rsa" "$H/.aws/credentials" "$H/.netrc"
mkdir -p "$M/tmp/AtomicRedTeam/atomics" "$M/tmp/atomic-sandbox"
# pivot_root, not chroot: the sandbox's root is then its mount namespace's root, and the kernel
# names its files as the processes inside see them (/root/.bashrc, not .../merged/root/.bashrc).
cd "$M"
mkdir -p .oldroot
pivot_root . .oldroot
cd /
umount -l /.oldroot
rmdir /.oldroot
exec /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PREREQ="${PREREQ:-}" \
    sh -c 'cd /srv/work && if [ -n "$PREREQ" ]; then (timeout 20 sh -c "$PREREQ") >/dev/null 2>&1 || true; fi; unset PREREQ; exec "$@"' sandbox "$@"
