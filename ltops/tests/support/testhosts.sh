#!/usr/bin/env bash
# testhosts.sh - throw-away "SSH hosts" for ltops end-to-end tests.
#
# Usage (as root):
#   testhosts.sh up DIR N ID        create N hosts (1..8); ID = 1-4 chars [a-z0-9],
#                                   unique among concurrent users of this script
#   testhosts.sh down DIR           destroy everything `up DIR` created (idempotent)
#   testhosts.sh stop-sshd DIR K    stop host K's sshd listener (new connections are
#                                   refused; already open SSH connections survive)
#   testhosts.sh start-sshd DIR K   start it again and wait until it answers
#   testhosts.sh link-down DIR K    take host K's network link down (connections
#                                   then time out instead of being refused)
#   testhosts.sh link-up DIR K      bring it back
#   testhosts.sh purge ID           tear down leftovers of ID whose DIR is gone
#
# What a "host" is: network namespace lt${ID}h${K} whose eth0 (10.213.S.(K+2)/24) is
# a veth attached to bridge ltb${ID} (10.213.S.1/24) in the root namespace, its own
# sshd listening on port 22 there, and its own unix user lt${ID}u${K} (own home
# directory). Hosts share the filesystem and PID space with everything else, so only
# the network and the user separate them. Nothing routes beyond the bridge.
#
# Files in DIR written by `up`:
#   state                   ID, N, S (read by down / stop-sshd / start-sshd)
#   hosts                   one line per host: "K ADDRESS USER NAMESPACE" (also on stdout)
#   id_ed25519[.pub]        client key, authorized on every host
#   wrong_ed25519[.pub]     client key authorized nowhere
#   authorized_keys         AuthorizedKeysFile of every sshd
#   ssh_config              for `ssh -F DIR/ssh_config` (no StrictHostKeyChecking;
#                           known_hosts DIR/known_hosts does not exist after up)
#   ssh_config_wrong_key    the same but with IdentityFile DIR/wrong_ed25519 only
#   hostK/                  sshd_config, host key, sshd.pid, sshd.log, uid
#
# Exit status: 0 on success; non-zero with a message on stderr otherwise. A failed
# `up` cleans up after itself (runs `down`).

set -Eeuo pipefail

PROG=testhosts
LOCKFILE=/run/lock/ltops-testhosts.lock
LOCK_HELD=0
UP_IN_PROGRESS=0
FAILED_AT=
DIR= ID= N= S=

log() { echo "$PROG: $*" >&2; }

die() {
    log "ERROR: $*"
    exit 1 # the EXIT trap cleans up if `up` had started creating things
}

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
}

# Record the failing command for unexpected `set -e` exits (only records; safe in subshells).
trap 'FAILED_AT="line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT TERM

on_exit() {
    local rc=$?
    if [ "$UP_IN_PROGRESS" = 1 ] && [ "$rc" != 0 ]; then
        UP_IN_PROGRESS=0
        [ -n "$FAILED_AT" ] && log "up failed (last failing command: $FAILED_AT)"
        log "cleaning up after failed up ..."
        ( do_down ) || log "cleanup after failed up was incomplete; run: $0 down $DIR"
    fi
    exit "$rc"
}
trap on_exit EXIT

# run DESCRIPTION CMD...: run CMD; on failure die with DESCRIPTION and CMD's output.
run() {
    local desc=$1 out
    shift
    if ! out=$("$@" 2>&1); then
        die "$desc: $out"
    fi
}

# One global lock serialises all create/destroy work of concurrent runs: user
# creation (/etc/passwd locking), first `ip netns add` (mounts /run/netns), and the
# "is this subnet free" check followed by taking it.
take_lock() {
    [ "$LOCK_HELD" = 1 ] && return 0
    exec 9>"$LOCKFILE"
    flock -w 120 9 || die "could not get $LOCKFILE within 120 s"
    LOCK_HELD=1
}

# Names and addresses, all derived from ID / K / S.
bridge()  { echo "ltb${ID}"; }
ns()      { echo "lt${ID}h$1"; }
veth()    { echo "lt${ID}v$1"; }
vpeer()   { echo "lt${ID}p$1"; }   # temporary name of the peer before it becomes eth0
user()    { echo "lt${ID}u$1"; }
addr()    { echo "10.213.${S}.$(($1 + 2))"; }
hostdir() { echo "$DIR/host$1"; }

ns_exists()   { [ -e "/run/netns/$1" ]; }
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }
user_exists() { getent passwd "$1" >/dev/null 2>&1; }

# Normalise DIR to an absolute path without characters that sshd/ssh config files
# would split or expand (whitespace, quotes, %, ~).
set_dir() {
    local d=$1
    [ -n "$d" ] || usage
    if [ "$2" = create ]; then
        mkdir -p "$d" || die "cannot create directory $d"
    fi
    [ -d "$d" ] || return 1
    DIR=$(cd "$d" && pwd -P)
    case "$DIR" in
        *[[:space:]\"\'%~\\]*) die "DIR must not contain whitespace, quotes, backslashes, % or ~: $DIR" ;;
    esac
}

load_state() {
    [ -f "$DIR/state" ] || return 1
    # shellcheck disable=SC1091
    ID=$(sed -n 's/^ID=//p' "$DIR/state")
    N=$(sed -n 's/^N=//p' "$DIR/state")
    S=$(sed -n 's/^S=//p' "$DIR/state")
    [[ "$ID" =~ ^[a-z0-9]{1,4}$ && "$N" =~ ^[1-8]$ && "$S" =~ ^[0-9]+$ ]] ||
        die "$DIR/state is corrupt: $(tr '\n' ' ' <"$DIR/state")"
}

check_host_index() {
    [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -lt "$N" ] || die "host index must be 0..$((N - 1)), got '$1'"
}

# Is process PID a live (not zombie) sshd? Guards against pid files pointing at a
# recycled pid. Zombies matter: PID 1 here may reap late, and a zombie keeps its comm.
is_sshd() {
    [ -n "$1" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = sshd ] &&
        [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != Z ]
}

# Non-zombie processes whose real or effective uid is $1.
live_pids_of_uid() {
    ps -o pid=,stat= -u "$1" -U "$1" 2>/dev/null | awk '$2 !~ /^Z/ {print $1}'
}

# ---------------------------------------------------------------------------
# sshd of one host

start_sshd() {
    local k=$1 hd
    hd=$(hostdir "$k")
    mkdir -p /run/sshd
    chmod 0755 /run/sshd
    rm -f "$hd/sshd.pid"
    # sshd daemonizes (stdio -> /dev/null), so nothing keeps our stdout/stderr open.
    # fd 9 is the lock; do not leak it into the daemon.
    if ! ip netns exec "$(ns "$k")" /usr/sbin/sshd -f "$hd/sshd_config" -E "$hd/sshd.log" \
        </dev/null >"$hd/sshd.start.out" 2>&1 9>&-; then
        die "sshd for host $k failed to start: $(cat "$hd/sshd.start.out"; tail -n 5 "$hd/sshd.log" 2>/dev/null)"
    fi
}

stop_sshd() {
    local k=$1 hd pid i
    hd=$(hostdir "$k")
    pid=$(cat "$hd/sshd.pid" 2>/dev/null || true)
    if is_sshd "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 50); do
            is_sshd "$pid" || break
            sleep 0.1
        done
        is_sshd "$pid" && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$hd/sshd.pid"
}

# ssh to host K and run `true`. Uses a private known_hosts that holds exactly this
# host's key (StrictHostKeyChecking=yes), so DIR/known_hosts - the file the tool
# under test sees - is never created by us.
ssh_probe() {
    local k=$1 hd
    hd=$(hostdir "$k")
    ssh -F "$DIR/ssh_config" -o UserKnownHostsFile="$hd/probe_known_hosts" \
        -o StrictHostKeyChecking=yes -o ConnectTimeout=2 \
        "$(user "$k")@$(addr "$k")" true </dev/null >/dev/null 2>"$hd/probe.err"
}

# Wait (bounded) until every host given answers ssh.
wait_ssh() {
    local deadline=$((SECONDS + 10)) k
    for k in "$@"; do
        until ssh_probe "$k"; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                die "host $k ($(user "$k")@$(addr "$k")) does not answer ssh after 10 s: $(cat "$(hostdir "$k")/probe.err"); sshd log: $(tail -n 5 "$(hostdir "$k")/sshd.log" 2>/dev/null)"
            fi
            sleep 0.2
        done
    done
}

# ---------------------------------------------------------------------------
# up

do_up() {
    [ $# -eq 3 ] || usage
    [[ "$2" =~ ^[1-8]$ ]] || die "N must be 1..8, got '$2'"
    [[ "$3" =~ ^[a-z0-9]{1,4}$ ]] || die "ID must be 1-4 characters [a-z0-9], got '$3'"
    N=$2 ID=$3
    [ "$(id -u)" = 0 ] || die "must run as root (creates users, network namespaces, sshds)"
    local tool
    for tool in ip ssh ssh-keygen /usr/sbin/sshd useradd userdel pkill flock runuser cksum; do
        command -v "$tool" >/dev/null || die "required program not found: $tool"
    done
    set_dir "$1" create

    # Subnet 10.213.S.0/24, S in 20..219, derived from ID.
    S=${TESTHOSTS_SUBNET:-$(( $(printf "%s" "$ID" | cksum | cut -d" " -f1) % 200 + 20 ))}

    take_lock

    # --- preconditions: nothing is created (and nothing is cleaned up) before these pass
    if [ -f "$DIR/state" ]; then
        die "$DIR already holds test hosts ($(tr '\n' ' ' <"$DIR/state")); run: $0 down $DIR"
    fi
    link_exists "$(bridge)" && die "bridge $(bridge) already exists (ID '$ID' in use by another run, or a leftover: run down on its DIR)"
    if ip -4 -o addr show | grep -q " 10\.213\.${S}\." || [ -n "$(ip -4 route show 10.213.${S}.0/24)" ]; then
        die "subnet 10.213.${S}.0/24 (derived from ID '$ID') is already in use: $(ip -4 -o addr show | grep " 10\.213\.${S}\." | awk '{print $2, $4}' | tr '\n' ' ')- another run whose ID hashes to the same subnet? use a different ID"
    fi
    local k
    for ((k = 0; k < N; k++)); do
        ns_exists "$(ns "$k")" && die "network namespace $(ns "$k") already exists (leftover? ip netns del $(ns "$k"))"
        link_exists "$(veth "$k")" && die "interface $(veth "$k") already exists"
        user_exists "$(user "$k")" && die "user $(user "$k") already exists (leftover? userdel -r $(user "$k"))"
    done
    for f in /etc/nologin /run/nologin; do
        [ -e "$f" ] && die "$f exists: sshd refuses all non-root logins"
    done

    # --- from here on, failures run `down`
    mkdir -p /run/sshd # sshd's privilege separation directory (sshd -t checks it too)
    chmod 0755 /run/sshd
    printf 'ID=%s\nN=%s\nS=%s\n' "$ID" "$N" "$S" >"$DIR/state"
    UP_IN_PROGRESS=1
    rm -f "$DIR/hosts" "$DIR/known_hosts"

    # Client keys (ssh-keygen asks before overwriting, so remove old ones first).
    rm -f "$DIR"/id_ed25519 "$DIR"/id_ed25519.pub "$DIR"/wrong_ed25519 "$DIR"/wrong_ed25519.pub
    run "ssh-keygen (client key) failed" ssh-keygen -q -t ed25519 -N '' -C "testhosts-$ID" -f "$DIR/id_ed25519"
    run "ssh-keygen (wrong key) failed" ssh-keygen -q -t ed25519 -N '' -C "testhosts-$ID-wrong" -f "$DIR/wrong_ed25519"

    # sshd reads AuthorizedKeysFile with the *target user's* uid, so DIR (and every
    # parent) must be searchable by others and the file world-readable. The private
    # keys stay 0600 root.
    cp "$DIR/id_ed25519.pub" "$DIR/authorized_keys"
    chmod 0644 "$DIR/authorized_keys"
    chmod a+x "$DIR"

    cat >"$DIR/ssh_config" <<EOF
# generated by testhosts.sh (ID $ID); use with: ssh -F $DIR/ssh_config
Host *
    UserKnownHostsFile $DIR/known_hosts
    GlobalKnownHostsFile /dev/null
    IdentityFile $DIR/id_ed25519
    IdentitiesOnly yes
    BatchMode yes
    ConnectTimeout 5
EOF
    # Same with only the unauthorized key. (`ssh -F DIR/ssh_config -i DIR/wrong_ed25519`
    # would NOT test a wrong key: ssh offers every IdentityFile, config ones included.)
    sed -e 's/id_ed25519/wrong_ed25519/' \
        -e "s|^# generated.*|# generated by testhosts.sh (ID $ID): ssh_config with the WRONG key; every login must fail|" \
        "$DIR/ssh_config" >"$DIR/ssh_config_wrong_key"

    # Network: bridge in the root namespace.
    run "cannot create network bridge $(bridge) (need root and CAP_NET_ADMIN)" \
        ip link add name "$(bridge)" type bridge
    run "cannot configure bridge $(bridge)" ip addr add "10.213.${S}.1/24" dev "$(bridge)"
    run "cannot bring up bridge $(bridge)" ip link set "$(bridge)" up

    local u hd
    for ((k = 0; k < N; k++)); do
        run "cannot create network namespaces here (need root and CAP_NET_ADMIN)" ip netns add "$(ns "$k")"
        run "cannot bring up lo in $(ns "$k")" ip -n "$(ns "$k")" link set lo up
        run "cannot create veth pair $(veth "$k")" \
            ip link add name "$(veth "$k")" type veth peer name "$(vpeer "$k")" netns "$(ns "$k")"
        run "cannot attach $(veth "$k") to $(bridge)" ip link set "$(veth "$k")" master "$(bridge)" up
        run "cannot rename veth peer in $(ns "$k")" ip -n "$(ns "$k")" link set "$(vpeer "$k")" name eth0
        run "cannot configure eth0 in $(ns "$k")" ip -n "$(ns "$k")" addr add "$(addr "$k")/24" dev eth0
        run "cannot bring up eth0 in $(ns "$k")" ip -n "$(ns "$k")" link set eth0 up

        # User. '*' (not '!') as password: with UsePAM no, sshd treats '!' as locked.
        u=$(user "$k")
        hd=$(hostdir "$k")
        mkdir -p "$hd"
        chmod 0755 "$hd"
        run "cannot create user $u" useradd -m -p '*' -s /bin/sh -c "ltops test host $k ($ID)" "$u"
        id -u "$u" >"$hd/uid"
        if ! runuser -u "$u" -- test -r "$DIR/authorized_keys"; then
            die "$DIR/authorized_keys is not readable by $u (sshd reads it as that user): make every parent directory of $DIR searchable by others (chmod o+x)"
        fi

        # sshd: own host key and config.
        rm -f "$hd/ssh_host_ed25519_key" "$hd/ssh_host_ed25519_key.pub"
        run "ssh-keygen (host key $k) failed" ssh-keygen -q -t ed25519 -N '' -C "testhost-$ID-$k" -f "$hd/ssh_host_ed25519_key"
        echo "$(addr "$k") $(cut -d' ' -f1,2 "$hd/ssh_host_ed25519_key.pub")" >"$hd/probe_known_hosts"
        cat >"$hd/sshd_config" <<EOF
# generated by testhosts.sh: host $k of ID $ID
ListenAddress $(addr "$k")
Port 22
HostKey $hd/ssh_host_ed25519_key
PidFile $hd/sshd.pid
LogLevel VERBOSE
UsePAM no
StrictModes no
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile $DIR/authorized_keys
AllowUsers $u
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
StreamLocalBindUnlink yes
MaxSessions 50
MaxStartups 50
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
# scp of OpenSSH >= 9 speaks SFTP by default
Subsystem sftp internal-sftp
EOF
        # OpenSSH >= 9.8 penalises clients that fail auth (our wrong-key tests); off if supported.
        if /usr/sbin/sshd -t -f "$hd/sshd_config" -o PerSourcePenalties=no >/dev/null 2>&1; then
            echo "PerSourcePenalties no" >>"$hd/sshd_config"
        fi
        run "sshd config for host $k is invalid" /usr/sbin/sshd -t -f "$hd/sshd_config"
        : >"$hd/sshd.log"
        start_sshd "$k"
    done

    # Release the lock before waiting: the rest only touches our own resources.
    exec 9>&-
    LOCK_HELD=0

    wait_ssh $(seq 0 $((N - 1)))
    rm -f "$DIR/known_hosts" # the tool under test must see first contact

    : >"$DIR/hosts"
    for ((k = 0; k < N; k++)); do
        echo "$k $(addr "$k") $(user "$k") $(ns "$k")" >>"$DIR/hosts"
    done
    UP_IN_PROGRESS=0
    cat "$DIR/hosts"
}

# ---------------------------------------------------------------------------
# down (best effort for every step, then verify; always called in a || context)

kill_uid_processes() {
    local uid=$1 i
    for i in $(seq 100); do
        [ -z "$(live_pids_of_uid "$uid")" ] && return 0
        pkill -KILL -u "$uid" 2>/dev/null || true
        pkill -KILL -U "$uid" 2>/dev/null || true
        sleep 0.1
    done
    log "processes of uid $uid survive SIGKILL: $(live_pids_of_uid "$uid" | tr '\n' ' ')"
    return 1
}

kill_ns_processes() {
    local n=$1 i pids
    for i in $(seq 100); do
        pids=$(ip netns pids "$n" 2>/dev/null || true)
        [ -z "$pids" ] && return 0
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 0.1
    done
    log "processes in namespace $n survive SIGKILL: $pids"
    return 1
}

# SysV shared memory / semaphores / message queues owned (or created) by uid $1.
remove_ipc_of_uid() {
    local kind id f
    for kind in m s q; do
        # /proc/sysvipc/{shm,sem,msg}: column 2 is the id; uid and cuid columns differ per kind
        case $kind in
            m) f=/proc/sysvipc/shm ;; s) f=/proc/sysvipc/sem ;; q) f=/proc/sysvipc/msg ;;
        esac
        [ -r "$f" ] || continue
        for id in $(awk -v uid="$1" 'NR > 1 {
                    for (i = 1; i <= NF; i++) if (h[i] == "uid" || h[i] == "cuid") if ($i == uid) { print $2; next }
                } NR == 1 { for (i = 1; i <= NF; i++) h[i] = $i }' "$f"); do
            ipcrm "-$kind" "$id" 2>/dev/null || true
        done
    done
    return 0
}

do_down() {
    if ! load_state; then
        log "nothing to tear down in $DIR (no state file)"
        return 0
    fi
    take_lock
    local k u uid hd home ok=1 out
    # 1. sshd listeners, then everything else in the namespaces (session sshds, and
    #    whatever the tests started there), then anything else run by the test users.
    for ((k = 0; k < N; k++)); do
        stop_sshd "$k"
    done
    for ((k = 0; k < N; k++)); do
        ns_exists "$(ns "$k")" && { kill_ns_processes "$(ns "$k")" || ok=0; }
    done
    for ((k = 0; k < N; k++)); do
        u=$(user "$k")
        hd=$(hostdir "$k")
        uid=$(id -u "$u" 2>/dev/null || true)
        if [ -z "$uid" ] && [ -f "$hd/uid" ]; then
            # user already gone: still kill by the uid it had, unless that uid was reused
            uid=$(cat "$hd/uid")
            getent passwd "$uid" >/dev/null 2>&1 && uid=
        fi
        [ -n "$uid" ] && { kill_uid_processes "$uid" || ok=0; }
    done
    # 2. users (and their homes and groups)
    for ((k = 0; k < N; k++)); do
        u=$(user "$k")
        user_exists "$u" || continue
        home=$(getent passwd "$u" | cut -d: -f6)
        uid=$(id -u "$u")
        # Leftovers outside the home: the uid is reused by the next run's users, so
        # remove their files in the shared temp dirs and their SysV IPC objects (a
        # SIGKILLed postgres leaves its shared memory segment behind).
        find /tmp /var/tmp /dev/shm -xdev -depth -uid "$uid" -delete 2>/dev/null || true
        remove_ipc_of_uid "$uid"
        # -f: also when a zombie of the user is still around
        if ! out=$(userdel -f -r "$u" 2>&1); then
            out=$(echo "$out" | grep -v 'mail spool .* not found' || true)
            user_exists "$u" && { log "userdel $u failed: $out"; ok=0; }
        fi
        if [ "$home" = "/home/$u" ] && [ -d "$home" ]; then
            rm -rf "$home" || ok=0
        fi
    done
    # 3. network: deleting the root-side veth also deletes its peer
    for ((k = 0; k < N; k++)); do
        link_exists "$(veth "$k")" && { ip link del "$(veth "$k")" || ok=0; }
        ns_exists "$(ns "$k")" && { ip netns del "$(ns "$k")" || ok=0; }
    done
    link_exists "$(bridge)" && { ip link del "$(bridge)" || ok=0; }

    # 4. verify
    link_exists "$(bridge)" && { log "bridge $(bridge) still exists"; ok=0; }
    for ((k = 0; k < N; k++)); do
        ns_exists "$(ns "$k")" && { log "namespace $(ns "$k") still exists"; ok=0; }
        link_exists "$(veth "$k")" && { log "interface $(veth "$k") still exists"; ok=0; }
        user_exists "$(user "$k")" && { log "user $(user "$k") still exists"; ok=0; }
    done
    if [ "$ok" = 1 ]; then
        rm -f "$DIR/state" "$DIR/hosts" "$DIR/known_hosts"
        return 0
    fi
    log "teardown of $DIR incomplete (state kept; run down again)"
    return 1
}

# ---------------------------------------------------------------------------

cmd=${1:-}
[ $# -ge 2 ] || usage
shift
case "$cmd" in
    up)
        do_up "$@"
        ;;
    down)
        [ $# -eq 1 ] || usage
        [ "$(id -u)" = 0 ] || die "must run as root"
        set_dir "$1" nocreate || { log "nothing to tear down: $1 does not exist"; exit 0; }
        # In a || context `set -e` is off inside do_down: teardown is best effort
        # throughout and reports what it could not remove at the end.
        do_down || exit 1
        ;;
    purge)
        # Tear down whatever exists for ID when its DIR is lost (e.g. a test run was
        # SIGKILLed): same as `down` with a state file for N=8 hosts.
        [ $# -eq 1 ] || usage
        [[ "$1" =~ ^[a-z0-9]{1,4}$ ]] || die "ID must be 1-4 characters [a-z0-9], got '$1'"
        [ "$(id -u)" = 0 ] || die "must run as root"
        tmp=$(mktemp -d /tmp/testhosts-purge.XXXXXX)
        printf 'ID=%s\nN=8\nS=%s\n' "$1" "$(( $(printf '%s' "$1" | cksum | cut -d' ' -f1) % 200 + 20 ))" >"$tmp/state"
        DIR=$tmp
        rc=0
        do_down || rc=$?
        rm -rf "$tmp"
        exit "$rc"
        ;;
    stop-sshd | start-sshd | link-down | link-up)
        [ $# -eq 2 ] || usage
        set_dir "$1" nocreate || die "$1 does not exist"
        load_state || die "no test hosts in $DIR (no state file)"
        check_host_index "$2"
        case "$cmd" in
            stop-sshd) stop_sshd "$2" ;;
            start-sshd)
                is_sshd "$(cat "$(hostdir "$2")/sshd.pid" 2>/dev/null || true)" || start_sshd "$2"
                wait_ssh "$2"
                ;;
            link-down) run "cannot take down $(veth "$2")" ip link set "$(veth "$2")" down ;;
            link-up) run "cannot bring up $(veth "$2")" ip link set "$(veth "$2")" up ;;
        esac
        ;;
    *)
        usage
        ;;
esac
