#!/bin/sh
# ltops-supervise -- a tiny process supervisor for hosts without systemd.
#
# ltops embeds this file (include_str!), uploads it as
# <clusterdir>/bin/ltops-supervise (mode 0755) and runs it over SSH.
# It needs only POSIX sh (dash, busybox ash, bash --posix) plus setsid, kill,
# sleep, cat, date, mkdir, rm, mv and a Linux /proc.
#
# USAGE
#   ltops-supervise start NAME LOG [--env-file FILE] -- PROGRAM [ARGS...]
#   ltops-supervise stop NAME [GRACE_SECONDS]        (default grace: 10)
#   ltops-supervise status NAME
#   ltops-supervise status-all
#   ltops-supervise restarts NAME
#
# start     Starts a detached supervisor for NAME (setsid: its own session and
#           process group, stdin </dev/null, stdout+stderr appended to LOG, no
#           other fd inherited), so the calling SSH command returns at once.
#           The supervisor runs PROGRAM ARGS (exec'd, so the child pid is
#           PROGRAM's pid) in the cwd `start` was called in, and restarts it
#           when it exits: backoff 1 s doubling to 30 s, reset to 1 s after a
#           run of >= 60 s.  After 10 consecutive crashes that each ran < 10 s
#           it gives up (status "failed").  Each restart appends to LOG:
#             ltops-supervise: NAME exited with status S after Ts; restarting in Bs (restart N)
#           and giving up appends:
#             ltops-supervise: NAME gave up after 10 quick crashes (last status S)
#           S is the shell's wait status (128+SIG when killed by a signal).
#           --env-file FILE: KEY=value lines (shell syntax) exported into
#           PROGRAM's environment only, so secrets never appear on a command
#           line.  The file is sourced by sh (set -a; . FILE), and again on
#           every restart, so it must stay in place while NAME runs.
#           Prints "started NAME pid SUPERVISOR_PID" once the supervisor has
#           recorded the first child pid (waits at most ~5 s).  It does not
#           wait for PROGRAM to be healthy.
# stop      SIGTERM to the supervisor, which forwards SIGTERM to the child,
#           waits for it, then SIGTERMs the rest of its process group.  If the
#           group (or the child) is still alive after GRACE_SECONDS, SIGKILL
#           the whole group.  Removes all run/NAME.* state files.  Prints
#           "stopped NAME", or "NAME was not running" (exit 0) when there was
#           nothing to stop.  A child left behind by a supervisor that died is
#           stopped as well.
# status    Prints one line:
#             running SUPERVISOR_PID CHILD_PID RESTARTS
#             starting SUPERVISOR_PID - RESTARTS     (no live child right now,
#                                                     e.g. between restarts)
#             failed STATUS RESTARTS                 (gave up; STATUS = last
#                                                     exit status)
#             stopped
# status-all  One line "NAME <status line>" per NAME with state in run/.
# restarts  Prints the number of restarts of the current/last run (0 if none).
#
# EXIT CODES  0 ok, 1 error, 2 bad usage (usage message on stderr),
#             3 already running ("NAME is already running (pid P)" on stderr).
#
# STATE (run dir = "$(dirname "$0")/../run", created mode 0700)
#   NAME.pid       supervisor pid (= its process group id and session id)
#   NAME.ticks     supervisor start time (field 22 of /proc/PID/stat)
#   NAME.child     "CHILD_PID CHILD_TICKS" of the most recent child
#   NAME.restarts  restart count
#   NAME.failed    last exit status, written when the supervisor gave up
#   NAME.lock/     short-lived mutex held by start/stop
# Files are written atomically (temp file + mv).  Processes are never looked
# up by name: a pid from these files only counts when /proc/PID/stat still
# shows the recorded start time and the process is not a zombie, so stale
# files and reused pids read as "not running".
#
# ENVIRONMENT (test knobs; ltops does not set them)
#   LTOPS_SUPERVISE_BACKOFF_MAX  maximum restart backoff in seconds (default
#                                30; 0 restarts immediately).  Tests use 1.
#   LTOPS_SUPERVISE_SHELL        shell that runs the supervisor (default
#                                /bin/sh; word-split, e.g. "bash --posix").
#
# CAVEATS
#   * PROGRAM starts with SIGINT and SIGQUIT ignored: POSIX sh ignores them
#     for background commands when job control is off, and that cannot be
#     undone from sh.  stop uses SIGTERM/SIGKILL only, so this is harmless
#     unless PROGRAM relies on SIGINT.
#   * A process that leaves the process group (calls setsid/setpgid itself)
#     is only reached if it is the recorded child; its own children are not.
#   * `start` closes fds 0-9 for the supervisor; dash cannot close fds >= 10,
#     so such fds inherited from the caller stay open in it.  sshd hands
#     commands only fds 0-2, so over SSH nothing of the session survives.
#   * If `start` gives up waiting (5 s, exit 1), a slow supervisor may still
#     come up afterwards; `status`/`stop` see it normally.
#   * Process groups are signalled as `kill -SIG -PGID` (XSI form, accepted
#     by dash, busybox and bash; checkbashisms flags it).  `kill -SIG -- -PGID`
#     fails in dash and busybox, and `kill -s SIG -PGID` fails in dash.

set -f
IFS=' 	
'
ME=ltops-supervise

# ---------------------------------------------------------------- helpers

usage() {
	[ $# -gt 0 ] && printf '%s: %s\n' "$ME" "$*" >&2
	printf '%s\n' \
		"usage: $ME start NAME LOG [--env-file FILE] -- PROGRAM [ARGS...]" \
		"       $ME stop NAME [GRACE_SECONDS]" \
		"       $ME status NAME" \
		"       $ME status-all" \
		"       $ME restarts NAME" >&2
	exit 2
}

die() { # CODE MESSAGE...
	_die_code=$1
	shift
	printf '%s: %s\n' "$ME" "$*" >&2
	exit "$_die_code"
}

log() { printf '%s: %s\n' "$ME" "$*" >&2; }

is_uint() {
	case $1 in '' | *[!0-9]*) return 1 ;; esac
	return 0
}

# A pid we may signal: digits, no leading zero, never 0 or 1 (kill 0 / kill -1
# would hit our own group / every process).
is_pid() {
	case $1 in '' | 0* | 1 | *[!0-9]*) return 1 ;; esac
	return 0
}

check_name() {
	case $1 in
	'' | [!A-Za-z0-9_]* | *[!A-Za-z0-9_.-]*)
		usage "invalid NAME '$1' (allowed: letters, digits, '_', '-', '.'; must not start with '-' or '.')"
		;;
	esac
}

nap() { sleep 0.1 2>/dev/null || sleep 1; }

# NOW = monotonic time in centiseconds (from /proc/uptime).
now_cs() {
	if IFS=' .' read -r _nc_s _nc_f _nc_rest 2>/dev/null </proc/uptime && is_uint "$_nc_s"; then
		_nc_f=${_nc_f#0}
		is_uint "$_nc_f" || _nc_f=0
		NOW=$((_nc_s * 100 + _nc_f))
	else
		NOW=$(($(date +%s) * 100))
	fi
}

# UP = uptime in whole seconds (for run-time measurement in the supervisor).
uptime_s() {
	now_cs
	UP=$((NOW / 100))
}

# read_stat PID: parse /proc/PID/stat into ST_STATE ST_PGRP ST_TICKS.
# The command name (field 2) may contain spaces and ')', so only the text
# after the last ')' is split.
read_stat() {
	is_uint "$1" || return 1
	_rs_line=
	IFS= read -r _rs_line 2>/dev/null <"/proc/$1/stat" || [ -n "$_rs_line" ] || return 1
	case $_rs_line in *')'*) ;; *) return 1 ;; esac
	_rs_rest=${_rs_line##*)}
	# shellcheck disable=SC2086 # intentional field splitting (noglob is on)
	set -- $_rs_rest
	[ $# -ge 20 ] || return 1
	ST_STATE=$1 ST_PGRP=$3 ST_TICKS=${20}
	return 0
}

# proc_alive PID TICKS: PID exists, is not a zombie and started at TICKS.
proc_alive() {
	is_pid "$1" && is_uint "$2" || return 1
	read_stat "$1" || return 1
	case $ST_STATE in Z | X | x) return 1 ;; esac
	[ "$ST_TICKS" = "$2" ]
}

# put FILE VALUE: atomic write.
put() {
	printf '%s\n' "$2" >"$1.tmp.$$" && mv -f "$1.tmp.$$" "$1" && return 0
	rm -f "$1.tmp.$$"
	return 1
}

# read_num FILE -> NUM (0 when missing or garbage)
read_num() {
	NUM=0
	_rn_v=
	read -r _rn_v _rn_rest 2>/dev/null <"$1"
	is_uint "$_rn_v" && NUM=$_rn_v
	return 0
}

ensure_run_dir() {
	[ -d "$RUN_DIR" ] && return 0
	(umask 077 && mkdir -p "$RUN_DIR") || die 1 "cannot create run dir $RUN_DIR"
}

# sup_alive NAME: sets SPID STICKS from the pid files; true if that
# supervisor is alive.
sup_alive() {
	SPID='' STICKS=''
	read -r SPID _sa_rest 2>/dev/null <"$RUN_DIR/$1.pid"
	read -r STICKS _sa_rest 2>/dev/null <"$RUN_DIR/$1.ticks"
	proc_alive "$SPID" "$STICKS"
}

# child_alive NAME: sets CPID CTICKS from NAME.child (emptied unless alive).
child_alive() {
	CPID='' CTICKS=''
	read -r CPID CTICKS _ca_rest 2>/dev/null <"$RUN_DIR/$1.child"
	proc_alive "$CPID" "$CTICKS" && return 0
	CPID='' CTICKS=''
	return 1
}

clean_state() { # NAME
	rm -f "$RUN_DIR/$1.pid" "$RUN_DIR/$1.ticks" "$RUN_DIR/$1.child" \
		"$RUN_DIR/$1.restarts" "$RUN_DIR/$1.failed"
}

# alive_any PGID|- [PID TICKS]...: true while one of the listed processes is
# alive or the process group PGID has a member that is not a zombie.
alive_any() {
	_aa_pg=$1
	shift
	while [ $# -ge 2 ]; do
		proc_alive "$1" "$2" && return 0
		shift 2
	done
	is_pid "$_aa_pg" || return 1
	kill_group 0 "$_aa_pg" || return 1
	# Something is in the group; ignore zombies (a non-reaping pid 1 may
	# keep them around).
	set +f
	set -- /proc/[0-9]*
	set -f
	for _aa_d in "$@"; do
		read_stat "${_aa_d#/proc/}" || continue
		[ "$ST_PGRP" = "$_aa_pg" ] || continue
		case $ST_STATE in Z | X | x) continue ;; esac
		return 0
	done
	return 1
}

# wait_gone SECS PGID|- [PID TICKS]...: poll until alive_any is false.
wait_gone() {
	_wg_secs=$1
	shift
	now_cs
	_wg_end=$((NOW + _wg_secs * 100))
	while alive_any "$@"; do
		now_cs
		[ "$NOW" -lt "$_wg_end" ] || return 1
		nap
	done
	return 0
}

# kill_group SIG PGID: signal every process in group PGID (see CAVEATS for
# why this is not `kill -s SIG -- -PGID`).
kill_group() {
	is_pid "$2" || return 1
	kill "-$1" "-$2" 2>/dev/null
}

kill_listed() { # SIG [PID TICKS]...
	_kl_sig=$1
	shift
	while [ $# -ge 2 ]; do
		proc_alive "$1" "$2" && kill -s "$_kl_sig" "$1" 2>/dev/null
		shift 2
	done
	return 0
}

# terminate_wait PGID|- GRACE [PID TICKS]...: after SIGTERM was sent, wait up
# to GRACE seconds, then SIGKILL the group and the listed processes.
terminate_wait() {
	_tw_pg=$1 _tw_grace=$2
	shift 2
	wait_gone "$_tw_grace" "$_tw_pg" "$@" && return 0
	kill_group KILL "$_tw_pg"
	kill_listed KILL "$@"
	wait_gone 5 "$_tw_pg" "$@" && return 0
	log "$NAME: processes still alive after SIGKILL"
	return 1
}

# Stop a child whose supervisor died (it may still hold ports etc.).
# Expects CPID/CTICKS (alive) and SPID (recorded supervisor pid = pgid).
stop_orphan() { # GRACE
	_so_pg=-
	read_stat "$CPID" && [ "$ST_PGRP" = "$SPID" ] && is_pid "$SPID" && _so_pg=$SPID
	if [ "$_so_pg" = - ]; then
		kill -s TERM "$CPID" 2>/dev/null
	else
		kill_group TERM "$_so_pg"
	fi
	terminate_wait "$_so_pg" "$1" "$CPID" "$CTICKS"
}

# ------------------------------------------------------------------ locking

LOCKED=0
lock_release() {
	[ "$LOCKED" = 1 ] && rm -rf "$LOCK_DIR"
	LOCKED=0
}

lock_acquire() { # NAME
	LOCK_DIR=$RUN_DIR/$1.lock
	read_stat $$ || die 1 "cannot read /proc/$$/stat"
	_la_me="$$ $ST_TICKS"
	_la_noowner=0
	now_cs
	_la_end=$((NOW + 30000)) # give up after 300 s
	trap 'lock_release' EXIT
	trap 'exit 129' HUP
	trap 'exit 130' INT
	trap 'exit 143' TERM
	while ! mkdir "$LOCK_DIR" 2>/dev/null; do
		_la_p='' _la_t=''
		if read -r _la_p _la_t 2>/dev/null <"$LOCK_DIR/owner"; then
			_la_noowner=0
			if ! proc_alive "$_la_p" "$_la_t"; then
				rm -rf "$LOCK_DIR" # holder died
				continue
			fi
		else
			# Holder is between mkdir and writing owner, or died there.
			_la_noowner=$((_la_noowner + 1))
			if [ "$_la_noowner" -ge 50 ]; then
				rm -rf "$LOCK_DIR"
				continue
			fi
		fi
		now_cs
		[ "$NOW" -lt "$_la_end" ] || die 1 "timed out waiting for lock $LOCK_DIR"
		nap
	done
	LOCKED=1
	put "$LOCK_DIR/owner" "$_la_me" || die 1 "cannot write $LOCK_DIR/owner"
}

# ----------------------------------------------------------------- commands

cmd_start() {
	[ $# -ge 2 ] || usage "start: missing NAME or LOG"
	NAME=$1 LOG=$2
	shift 2
	check_name "$NAME"
	[ -n "$LOG" ] || usage "start: empty LOG"
	ENVF=
	while :; do
		[ $# -gt 0 ] || usage "start: missing '--' PROGRAM"
		case $1 in
		--env-file)
			[ $# -ge 2 ] || usage "start: --env-file needs a FILE"
			ENVF=$2
			shift 2
			;;
		--env-file=*)
			ENVF=${1#*=}
			shift
			;;
		--)
			shift
			break
			;;
		*) usage "start: unexpected argument '$1'" ;;
		esac
	done
	[ $# -ge 1 ] || usage "start: missing PROGRAM"
	if [ -n "$ENVF" ]; then
		if [ ! -f "$ENVF" ] || [ ! -r "$ENVF" ]; then
			die 1 "env file '$ENVF' is not a readable file"
		fi
		# `. FILE` searches PATH when FILE has no slash.
		case $ENVF in */*) ;; *) ENVF=./$ENVF ;; esac
	fi
	true 2>/dev/null >>"$LOG" || die 1 "cannot append to log file '$LOG'"
	command -v setsid >/dev/null 2>&1 || die 1 "setsid not found"

	ensure_run_dir
	lock_acquire "$NAME"
	if sup_alive "$NAME"; then
		printf '%s is already running (pid %s)\n' "$NAME" "$SPID" >&2
		exit 3
	fi
	if child_alive "$NAME"; then
		log "$NAME: stopping child $CPID left behind by dead supervisor $SPID"
		stop_orphan 10 || die 1 "$NAME: could not stop orphaned child $CPID"
	fi
	clean_state "$NAME"

	# Detach: new session, no fd of ours (ssh channel) survives in it.
	# shellcheck disable=SC2086 # LTOPS_SUPERVISE_SHELL is word-split on purpose
	setsid ${LTOPS_SUPERVISE_SHELL:-/bin/sh} "$SELF" __supervise "$NAME" "$ENVF" "$@" \
		</dev/null >>"$LOG" 2>&1 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &

	now_cs
	_st_end=$((NOW + 500))
	while [ ! -f "$RUN_DIR/$NAME.child" ]; do
		now_cs
		[ "$NOW" -lt "$_st_end" ] || die 1 "$NAME: supervisor did not start within 5s (see $LOG)"
		nap
	done
	read -r SPID _st_rest 2>/dev/null <"$RUN_DIR/$NAME.pid"
	printf 'started %s pid %s\n' "$NAME" "$SPID"
}

cmd_stop() {
	if [ $# -lt 1 ] || [ $# -gt 2 ]; then
		usage "stop: expected NAME [GRACE_SECONDS]"
	fi
	NAME=$1
	check_name "$NAME"
	GRACE=${2:-10}
	is_uint "$GRACE" || usage "stop: GRACE_SECONDS must be a non-negative integer"
	ensure_run_dir
	lock_acquire "$NAME"
	if sup_alive "$NAME"; then
		child_alive "$NAME"
		_sp_pg=-
		read_stat "$SPID" && [ "$ST_PGRP" = "$SPID" ] && _sp_pg=$SPID
		kill -s TERM "$SPID" 2>/dev/null
		# shellcheck disable=SC2086 # CPID/CTICKS are empty or two numbers
		terminate_wait "$_sp_pg" "$GRACE" "$SPID" "$STICKS" $CPID $CTICKS ||
			die 1 "$NAME: could not stop all processes (state files kept)"
		clean_state "$NAME"
		printf 'stopped %s\n' "$NAME"
	elif child_alive "$NAME"; then
		stop_orphan "$GRACE" || die 1 "$NAME: could not stop orphaned child $CPID"
		clean_state "$NAME"
		printf 'stopped %s\n' "$NAME"
	else
		clean_state "$NAME"
		printf '%s was not running\n' "$NAME"
	fi
}

# status_line NAME -> SL
status_line() {
	read_num "$RUN_DIR/$1.restarts"
	_sl_r=$NUM
	if [ -f "$RUN_DIR/$1.failed" ]; then
		read_num "$RUN_DIR/$1.failed"
		SL="failed $NUM $_sl_r"
	elif sup_alive "$1"; then
		if child_alive "$1"; then
			SL="running $SPID $CPID $_sl_r"
		else
			SL="starting $SPID - $_sl_r"
		fi
	else
		SL=stopped
	fi
}

cmd_status() {
	[ $# -eq 1 ] || usage "status: expected NAME"
	check_name "$1"
	ensure_run_dir
	status_line "$1"
	printf '%s\n' "$SL"
}

cmd_status_all() {
	[ $# -eq 0 ] || usage "status-all: takes no arguments"
	ensure_run_dir
	set +f
	set -- "$RUN_DIR"/*.pid "$RUN_DIR"/*.failed
	set -f
	for _sa_f in "$@"; do
		[ -f "$_sa_f" ] || continue
		_sa_n=${_sa_f##*/}
		case $_sa_n in
		*.pid) _sa_n=${_sa_n%.pid} ;;
		*.failed)
			_sa_n=${_sa_n%.failed}
			[ -f "$RUN_DIR/$_sa_n.pid" ] && continue # already listed
			;;
		esac
		case $_sa_n in '' | [!A-Za-z0-9_]* | *[!A-Za-z0-9_.-]*) continue ;; esac
		status_line "$_sa_n"
		printf '%s %s\n' "$_sa_n" "$SL"
	done
}

cmd_restarts() {
	[ $# -eq 1 ] || usage "restarts: expected NAME"
	check_name "$1"
	ensure_run_dir
	read_num "$RUN_DIR/$1.restarts"
	printf '%s\n' "$NUM"
}

# --------------------------------------------------------------- supervisor

on_term() {
	STOPPING=1
	[ -n "$CHILD" ] && kill -s TERM "$CHILD" 2>/dev/null
	[ -n "$SLEEPER" ] && kill -s TERM "$SLEEPER" 2>/dev/null
	return 0
}

# Internal: __supervise NAME ENVFILE PROGRAM [ARGS...]; started by cmd_start
# under setsid with stdout/stderr on LOG.
supervise() {
	NAME=$1 ENVF=$2
	shift 2
	STOPPING=0 CHILD='' SLEEPER=''
	trap 'on_term' TERM
	read_stat $$ || exit 1
	put "$RUN_DIR/$NAME.ticks" "$ST_TICKS" || exit 1
	put "$RUN_DIR/$NAME.pid" "$$" || exit 1
	put "$RUN_DIR/$NAME.restarts" 0

	max=${LTOPS_SUPERVISE_BACKOFF_MAX:-30}
	is_uint "$max" || max=30
	backoff=1
	[ "$backoff" -le "$max" ] || backoff=$max
	restarts=0 quick=0 st=0
	log "$NAME supervisor started (pid $$)"

	while [ "$STOPPING" = 0 ]; do
		uptime_s
		t0=$UP
		(
			set +f
			if [ -n "$ENVF" ]; then
				set -a
				# shellcheck source=/dev/null
				. "$ENVF"
				set +a
			fi
			exec "$@"
		) &
		CHILD=$!
		# A TERM that arrived before CHILD was set must still reach it.
		[ "$STOPPING" = 1 ] && kill -s TERM "$CHILD" 2>/dev/null
		if read_stat "$CHILD"; then
			put "$RUN_DIR/$NAME.child" "$CHILD $ST_TICKS"
		else
			put "$RUN_DIR/$NAME.child" "$CHILD 0"
		fi

		# wait returns early (>128) when our TERM trap fires; keep waiting
		# until the child is really gone.
		while :; do
			wait "$CHILD" 2>/dev/null
			st=$?
			[ "$st" -gt 128 ] && kill -s 0 "$CHILD" 2>/dev/null && continue
			break
		done
		CHILD=
		uptime_s
		ran=$((UP - t0))
		[ "$STOPPING" = 1 ] && break

		if [ "$ran" -lt 10 ]; then quick=$((quick + 1)); else quick=0; fi
		if [ "$quick" -ge 10 ]; then
			put "$RUN_DIR/$NAME.failed" "$st"
			log "$NAME gave up after 10 quick crashes (last status $st)"
			exit 1
		fi
		if [ "$ran" -ge 60 ]; then
			backoff=1
			[ "$backoff" -le "$max" ] || backoff=$max
		fi
		delay=$backoff
		backoff=$((backoff * 2))
		[ "$backoff" -le "$max" ] || backoff=$max
		restarts=$((restarts + 1))
		put "$RUN_DIR/$NAME.restarts" "$restarts"
		log "$NAME exited with status $st after ${ran}s; restarting in ${delay}s (restart $restarts)"
		if [ "$delay" -gt 0 ] && [ "$STOPPING" = 0 ]; then
			sleep "$delay" &
			SLEEPER=$!
			[ "$STOPPING" = 1 ] && kill -s TERM "$SLEEPER" 2>/dev/null
			wait "$SLEEPER"
			SLEEPER=
		fi
	done

	# Stopping: take down whatever else is left in our process group
	# (grandchildren); `stop` escalates to SIGKILL after the grace period.
	trap '' TERM
	kill_group TERM "$$"
	log "$NAME stopped (last status $st)"
	exit 0
}

# --------------------------------------------------------------------- main

case $0 in */*) _self_dir=${0%/*} ;; *) _self_dir=. ;; esac
BIN_DIR=$(CDPATH='' cd -P "$_self_dir" 2>/dev/null && pwd) || die 1 "cannot resolve directory of $0"
SELF=$BIN_DIR/${0##*/}
RUN_DIR=${BIN_DIR%/*}/run

[ $# -ge 1 ] || usage
cmd=$1
shift
case $cmd in
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
status) cmd_status "$@" ;;
status-all) cmd_status_all "$@" ;;
restarts) cmd_restarts "$@" ;;
__supervise)
	[ $# -ge 3 ] || usage
	supervise "$@"
	;;
-h | --help | help) usage ;;
*) usage "unknown command '$cmd'" ;;
esac
