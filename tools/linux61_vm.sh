#!/bin/bash
# Run the course's test suite on Debian 12's stock kernel (linux-image-amd64, 6.1.x) in qemu (TCG).
#
#   tools/linux61_vm.sh [REV] [PYTEST-PATHS...]      (as root; needs debootstrap, qemu-system-x86, e2fsprogs)
#
# Not part of the test command: the course's claims are checked on a stock kernel with it
# (issue "truth that travels"). Socket code runs 5-6x slower under TCG: judge non-timing
# claims. The whole suite does not finish in 80 min there; run files or notebooks by path.
#
#   REV            git revision of this checkout to test (default HEAD)
#   PYTEST-PATHS   if given, run `.venv/bin/python -m pytest -p no:cacheprovider PATH` once per path
#                  (as root, on the VM's own settings, one junit file each; notebooks with TCPCOURSE_MODE=live) instead of
#                  `python3 course.py test`. A path ending in .ipynb gets nbval's options (--nbval-lax ...).
#
# Environment: VM_TIMEOUT_MIN (default 80), VM_MEM (6G), VM_SMP (2), VM_NICE (0), VM_CPU (Nehalem; "max" gives AVX2, under which pytest segfaulted in numpy/pandas), REBUILD_BASE=1 to rebuild
# the cached base rootfs, COURSE_ARGS="--profile machine" to pass options to course.py test.
# Results: $VM_DIR/results-<shortrev>/ (result.log, console.log, junit-*.xml, vm-info.txt).
set -euo pipefail

VM=${VM_DIR:-/var/tmp/tcpcourse-vm61}   # work folder (root fs cache, images, results)
SRC=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$VM"
BASE=$VM/rootfs            # cached bookworm root (kernel + tools); /opt/course is replaced per run
IMG=${VM_IMG:-$VM/disk.img}   # VM_IMG=... to run a second VM beside a running one
# the Debian mirrors this machine's apt already uses (first: main archive, second: security)
# (either file may be missing: a deb822-only machine has no sources.list)
apt_uris() { { cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '$1 == "URIs:" {print $2}' || true;
               cat /etc/apt/sources.list 2>/dev/null | awk '$1 == "deb" {print $2}' || true; } | awk '!seen[$0]++'; }
MIRROR=${VM_MIRROR:-$(apt_uris | grep -v security | head -n1)}
SECURITY=${VM_SECURITY_MIRROR:-$(apt_uris | grep security | head -n1)}
REV=$(git -C "$SRC" rev-parse --verify "${1:-HEAD}^{commit}"); shift || true   # pinned: HEAD moves while we build
TIMEOUT_MIN=${VM_TIMEOUT_MIN:-80}
SHORT=$(git -C "$SRC" rev-parse --short "$REV")
OUT=$VM/results-$SHORT${VM_TAG:+-$VM_TAG}   # VM_TAG=x -> results-<rev>-x
PKGS="linux-image-amd64 python3 python3-venv git tcpdump tshark iproute2 ethtool iptables strace
      procps util-linux kmod udev ca-certificates iputils-ping less"

log() { echo "[run-61 $(date -u +%H:%M:%S)] $*" >&2; }

mounted=()
chroot_mount() {
    mount -t proc proc "$BASE/proc";   mounted+=("$BASE/proc")
    mount -t sysfs sys "$BASE/sys";    mounted+=("$BASE/sys")
    mount --bind /dev "$BASE/dev";     mounted+=("$BASE/dev")
    mount --bind /dev/pts "$BASE/dev/pts"; mounted+=("$BASE/dev/pts")
    cp -L /etc/resolv.conf "$BASE/etc/resolv.conf"
}
chroot_umount() {
    local i
    for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
    mounted=()
}
trap chroot_umount EXIT

# -- (a) base root, built once ------------------------------------------------------------
build_base() {
    log "debootstrap bookworm into $BASE"
    rm -rf "$BASE"; mkdir -p "$BASE"
    debootstrap --variant=minbase --include=ca-certificates,apt-utils bookworm "$BASE" "$MIRROR" \
        > "$VM/debootstrap.log" 2>&1
    cat > "$BASE/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
${SECURITY:+deb $SECURITY bookworm-security main}
EOF
    # the egress proxy's CA (pip in the chroot needs it); harmless inside the VM
    cp /usr/local/share/ca-certificates/*.crt "$BASE/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot_mount
    chroot "$BASE" sh -c '
        set -e
        export DEBIAN_FRONTEND=noninteractive
        echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends '"$(echo $PKGS)"'
        update-ca-certificates
        apt-get clean
    ' > "$VM/base-apt.log" 2>&1
    chroot_umount
    echo vm61 > "$BASE/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 vm61\n::1 localhost ip6-localhost ip6-loopback\n' > "$BASE/etc/hosts"
    printf '/dev/vda / ext4 rw 0 1\n' > "$BASE/etc/fstab"
    touch "$BASE/.base-done"
    log "base root ready: $(ls "$BASE"/boot/vmlinuz-*)"
}

# -- (b)+(c) the course at REV, with its venv ---------------------------------------------
install_course() {
    local c=$BASE/opt/course keep=$VM/venv-cache
    local want; want=$(git -C "$SRC" show "$REV:pyproject.toml" | sha256sum | cut -d' ' -f1)
    rm -rf "$keep"
    if [ -f "$c/.venv/.course-stamp" ] && [ "$(cat "$c/.venv/.course-stamp")" = "$want" ]; then
        mv "$c/.venv" "$keep"    # same pyproject.toml: keep the venv
    fi
    rm -rf "$c"; mkdir -p "$c"
    git -C "$SRC" archive "$REV" | tar -x -C "$c"
    echo "$(git -C "$SRC" rev-parse "$REV")" > "$c/.tested-rev"
    if [ -d "$keep" ]; then
        mv "$keep" "$c/.venv"; log "venv kept (pyproject.toml unchanged)"
        return
    fi
    log "building the venv in the chroot"
    chroot_mount
    chroot "$BASE" sh -c '
        set -e
        cd /opt/course
        python3 -m venv .venv
        export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
        .venv/bin/python -m pip --disable-pip-version-check -q install --upgrade pip
        .venv/bin/python -m pip --disable-pip-version-check -q install -e "/opt/course[test]"
    ' > "$VM/venv-build.log" 2>&1
    chroot_umount
    echo "$want" > "$c/.venv/.course-stamp"    # as course.py ensure_venv() writes it
    log "venv built"
}

# -- the init script run inside the VM ----------------------------------------------------
write_init() {
    local cmd
    if [ $# -eq 0 ]; then
        cmd="python3 course.py test ${COURSE_ARGS:-}"
    else
        # one pytest per path, each with its own junit file, so a timeout keeps what finished
        local nb p
        # as course.py: mode left on auto for tests (some test the auto mode), live for notebooks
        cmd="mkdir -p .course; unset TCPCOURSE_MODE; export PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg"
        for p in "$@"; do
            nb=""; case $p in *.ipynb) nb="--nbval-lax --nbval-cell-timeout=600 --nbval-kernel-name=python3"
                                       p0="TCPCOURSE_MODE=live ";; *) p0="";; esac
            cmd="$cmd; echo \"[adhoc] \$(date -u +%T) $p\"; ${p0}.venv/bin/python -m pytest -p no:cacheprovider $nb --junitxml=.course/junit-adhoc-$(echo "$p" | tr '/:[] ' '-----').xml $p"
        done
        cmd="$cmd; echo \"[adhoc] \$(date -u +%T) done\""
    fi
    echo "$cmd" > "$BASE/opt/vm-cmd"
    cat > "$BASE/opt/run-in-vm.sh" <<EOF
#!/bin/bash
# PID 1 in the VM: mount, check the kernel, run the tests, power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb
mount -t proc proc /proc; mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null; mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
mount -o remount,rw /
hostname vm61
ip link set lo up
for m in nf_tables nft_compat nft_chain_nat x_tables xt_tcpudp xt_conntrack nf_conntrack xt_multiport xt_comment sch_netem; do modprobe \$m 2>/dev/null; done
INFO=/opt/vm-info.txt
{
  echo "booted after \$(cut -d' ' -f1 /proc/uptime) s"
  echo "uname -r: \$(uname -r)"; uname -a
  sysctl net.ipv4.tcp_congestion_control net.ipv4.tcp_available_congestion_control net.ipv4.tcp_allowed_congestion_control \\
         net.core.rmem_max net.core.wmem_max net.ipv4.tcp_rmem net.ipv4.tcp_wmem net.core.default_qdisc \\
         net.core.somaxconn net.ipv4.tcp_max_syn_backlog net.ipv4.tcp_syn_linear_timeouts 2>&1
  ip netns add x && ip -n x link set lo up && echo "ip netns add x: OK" && ip netns exec x cat /proc/sys/net/ipv4/tcp_rmem; ip netns del x
  iptables -V; iptables -A OUTPUT -o lo -p tcp --dport 9 -j DROP && iptables -S OUTPUT && iptables -D OUTPUT -o lo -p tcp --dport 9 -j DROP && echo "iptables: OK"
  timeout 5 tcpdump -i lo -c 1 -n icmp >/tmp/td.out 2>&1 & sleep 2; ping -c 2 -W 1 127.0.0.1 >/dev/null; wait; echo "tcpdump on lo: \$(grep -c ICMP /tmp/td.out) packet(s)"
  python3 --version; nproc; free -m | head -2
  echo "command: \$(cat /opt/vm-cmd)"
} > \$INFO 2>&1
sed 's/^/[vm] /' \$INFO > /dev/console
cd /opt/course
echo "[vm] start \$(date -u)" > /dev/console
timeout -k 30 ${TIMEOUT_MIN}m bash -c "\$(cat /opt/vm-cmd)" > /opt/result.log 2>&1
rc=\$?
echo "exit code: \$rc" >> /opt/result.log
echo "[vm] end \$(date -u) rc=\$rc" > /dev/console
grep -E "^\[adhoc\]|^\[course\] (summary|stage)|^  [a-z-]+/|whole suite|passed|failed|error" /opt/result.log | tail -40 | sed 's/^/[vm] /' > /dev/console
sync; sleep 1; sync
mount -o remount,ro / 2>/dev/null
echo o > /proc/sysrq-trigger
sleep 5; poweroff -f
EOF
    chmod +x "$BASE/opt/run-in-vm.sh"
    rm -f "$BASE/opt/result.log" "$BASE/opt/vm-info.txt"
}

# -- (d) image, (e) boot, (f) extract ------------------------------------------------------
make_image() {
    log "making $IMG"
    rm -f "$IMG"
    truncate -s 8G "$IMG"
    mkfs.ext4 -q -F -L root -d "$BASE" "$IMG"
}

boot() {
    local kernel initrd
    kernel=$(ls "$BASE"/boot/vmlinuz-* | sort -V | tail -1)
    initrd=$(ls "$BASE"/boot/initrd.img-* | sort -V | tail -1)
    mkdir -p "$OUT"
    log "booting $(basename "$kernel") (console: $OUT/console.log, timeout ${TIMEOUT_MIN} min + 10)"
    local t0=$SECONDS
    nice -n "${VM_NICE:-0}" timeout $(( (TIMEOUT_MIN + 10) * 60 )) qemu-system-x86_64 -accel tcg -cpu "${VM_CPU:-Nehalem}" -m "${VM_MEM:-6G}" -smp "${VM_SMP:-2}" \
        -nographic -no-reboot -nic none \
        -kernel "$kernel" -initrd "$initrd" \
        -drive file="$IMG",format=raw,if=virtio,cache=unsafe \
        -append "root=/dev/vda rw console=ttyS0 init=/opt/run-in-vm.sh panic=-1 quiet loglevel=4" \
        < /dev/null > "$OUT/console.log" 2>&1 || log "qemu exit $?"
    log "VM ran $((SECONDS - t0)) s"
}

extract() {
    rm -rf "$OUT/course-state"
    debugfs -R "dump /opt/result.log $OUT/result.log" "$IMG" 2>/dev/null || true
    debugfs -R "dump /opt/vm-info.txt $OUT/vm-info.txt" "$IMG" 2>/dev/null || true
    debugfs -R "rdump /opt/course/.course $OUT" "$IMG" 2>/dev/null || true
    [ -d "$OUT/.course" ] && mv "$OUT/.course" "$OUT/course-state" && cp "$OUT"/course-state/junit-*.xml "$OUT"/ 2>/dev/null
    log "results in $OUT:"; ls "$OUT" >&2
    tail -8 "$OUT/result.log" >&2 || true
}

[ -f "$BASE/.base-done" ] && [ -z "${REBUILD_BASE:-}" ] || build_base
install_course
write_init "$@"
make_image
boot
extract
