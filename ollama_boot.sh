#!/usr/bin/env bash
# Container entry point of the RunPod Ollama worker.
#
#   ollama_boot.sh [HANDLER ARGS...]  run: start `ollama serve` and the handler side by side,
#                                     check and preload DEFAULT_MODEL, then serve jobs
#   ollama_boot.sh bake               image build: pull PULL_MODELS, create DEFAULT_MODEL
#                                     from the Modelfile, stop the server (PULL_MODELS=none:
#                                     nothing, for an image that serves the model cache)
#
# Run mode exits non-zero when Ollama does not come up, the model is missing or Ollama dies
# later (so RunPod replaces the worker); it exits with the handler's status if that ends.
# SIGTERM/SIGINT: the handler takes no more jobs and finishes those in flight, then Ollama
# stops; everything it started is gone within 10 s.
set -euo pipefail

worker_dir=${WORKER_DIR:-$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)}
python=${PYTHON:-python3}
boot_timeout=${OLLAMA_BOOT_TIMEOUT_S:-120}
default_model=${DEFAULT_MODEL:-voice-assistant}
pull_on_boot=${OLLAMA_PULL_ON_BOOT:-}
modelfile=${MODELFILE:-$worker_dir/Modelfile}
# queue: the RunPod job worker (rp_handler.py); http: a load-balancing endpoint's HTTP server
# (http_server.py), which answers its health check 204 until the boot below is done.
worker_mode=${WORKER_MODE:-queue}
worker_mode=${worker_mode,,}
ready_file=''
# On SIGTERM the handler stops taking jobs and gives those in flight WORKER_STOP_GRACE_S to
# finish and report (it fails the rest itself); it gets one second more before SIGKILL. Only
# then is Ollama stopped, with its own TERM -> KILL grace. 5 + 1 + 2, and at most 1 s for the
# log prefixer, fit the 10 s a container gets between SIGTERM and SIGKILL.
job_grace_s=${WORKER_STOP_GRACE_S:-5}
stop_grace_s=${BOOT_STOP_GRACE_S:-2}
# The boot helper is imported as `ollama_worker.boot` whatever the working directory.
export PYTHONPATH="$worker_dir${PYTHONPATH:+:$PYTHONPATH}"

# setsid gives a background child its own session and process group; it does so in place
# (no fork) because a job of a non-interactive shell never leads a group, so $! stays the
# child's pid. Without setsid, children are stopped one by one.
detach=()
if command -v setsid >/dev/null; then detach=(setsid); fi

ollama_pid=''
prefix_pid=''
handler_pid=''
boot_pid=''

log() { printf 'ollama_boot: %s\n' "$*" >&2; }

# `ollama serve` and the handler each lead their own process group (see `detach`), so a
# signal to the group also reaches what they spawned: Ollama's runners, or the probe that
# py-cpuinfo forks while runpod is imported. Other pids are signalled alone.
signal_tree() {
  kill -"$1" -- "-$2" 2>/dev/null || kill -"$1" "$2" 2>/dev/null
}

# True while any of the given processes (or their groups) runs; bash reaps its children
# as they exit, so a finished child no longer counts.
any_alive() {
  local pid
  for pid in "$@"; do
    if [[ -n $pid ]] && signal_tree 0 "$pid"; then return 0; fi
  done
  return 1
}

# Wait up to $1 seconds (a decimal) for the given processes to end.
wait_for_exit() {
  local ticks=0 limit
  limit=$(awk -v s="$1" 'BEGIN { printf "%d", s * 10 }')
  shift
  while any_alive "$@" && ((ticks < limit)); do
    sleep 0.1
    ticks=$((ticks + 1))
  done
}

# TERM the given processes, wait up to $1 seconds, KILL whatever is left, reap them all.
stop_pids() {
  local grace=$1 pid
  shift
  for pid in "$@"; do
    if [[ -n $pid ]]; then signal_tree TERM "$pid" || true; fi
  done
  wait_for_exit "$grace" "$@"
  for pid in "$@"; do
    if [[ -n $pid ]] && signal_tree 0 "$pid"; then
      log "pid $pid (or its group) ignored SIGTERM for ${grace} s; killing it"
      signal_tree KILL "$pid" || true
    fi
  done
  for pid in "$@"; do
    if [[ -n $pid ]]; then wait "$pid" 2>/dev/null || true; fi
  done
}

stop_all() {
  # The handler first, while Ollama still answers, so the jobs in flight can finish.
  if [[ -n $handler_pid ]]; then
    stop_pids "$(awk -v g="$job_grace_s" 'BEGIN { print g + 1 }')" "$handler_pid"
    handler_pid=''
    log "the handler has stopped; stopping Ollama"
  fi
  stop_pids "$stop_grace_s" "$boot_pid" "$ollama_pid"
  boot_pid='' ollama_pid=''
  # The prefixer ends by itself once Ollama's output closes, after its last lines; the
  # stop covers an orphaned runner still holding the pipe.
  wait_for_exit 1 "$prefix_pid"
  stop_pids 1 "$prefix_pid"
  prefix_pid=''
  if [[ -n $ready_file ]]; then rm -f "$ready_file"; fi
}

on_exit() {
  local status=$?
  trap '' TERM INT
  stop_all || true
  exit "$status"
}

on_signal() {
  trap '' TERM INT
  log "got SIG$1; stopping the handler (jobs in flight get ${job_grace_s} s), then Ollama"
  stop_all || true
  trap - EXIT
  exit "$2"
}

trap on_exit EXIT
trap 'on_signal TERM 143' TERM
trap 'on_signal INT 130' INT

# Start `ollama serve` in the background with every output line prefixed "[ollama] ".
start_ollama() {
  local log_fd
  # The prefixer ignores SIGINT so a Ctrl-C to the whole group does not cut off
  # Ollama's shutdown lines; it ends at EOF or by stop_all.
  exec {log_fd}> >(trap '' INT && exec sed -u 's/^/[ollama] /' >&2)
  prefix_pid=$!
  "${detach[@]}" ollama serve >&"$log_fd" 2>&1 &
  ollama_pid=$!
  # Only Ollama may hold the pipe, or the prefixer would never see EOF.
  exec {log_fd}>&-
  log "started ollama serve (pid $ollama_pid) on ${OLLAMA_HOST:-127.0.0.1:11434}"
}

bake() {
  local models model pull_models
  if [[ ${PULL_MODELS-} == none ]]; then
    log "PULL_MODELS=none: nothing baked; the worker serves HF_MODEL from the model cache"
    return
  fi
  start_ollama
  "$python" -m ollama_worker.boot wait --pid "$ollama_pid" >/dev/null
  pull_models=${PULL_MODELS:-llama3.1:8b}
  # PULL_MODELS is space or comma separated.
  read -r -a models <<<"${pull_models//,/ }"
  for model in "${models[@]}"; do
    log "pulling $model"
    ollama pull "$model" </dev/null
  done
  # The worker's own rule for "the same model" (tag, registry and case aside).
  if "$python" -m ollama_worker.boot among "$default_model" "${models[@]}"; then
    log "DEFAULT_MODEL $default_model is one of PULL_MODELS; using it as pulled"
  else
    log "creating $default_model from $modelfile"
    ollama create "$default_model" -f "$modelfile" </dev/null
  fi
  "$python" -m ollama_worker.boot check "$default_model"
  stop_pids "$stop_grace_s" "$ollama_pid"
  ollama_pid=''
  log "baked ${models[*]:-nothing pulled} and $default_model into ${OLLAMA_MODELS:-~/.ollama/models}"
}

start_handler() {
  if [[ $worker_mode == http ]]; then
    "${detach[@]}" "$python" "$worker_dir/http_server.py" --ready-file "$ready_file" "$@" &
  else
    WORKER_WAIT_FOR_OLLAMA_S=${WORKER_WAIT_FOR_OLLAMA_S:-$boot_timeout} \
      "${detach[@]}" "$python" "$worker_dir/rp_handler.py" "$@" &
  fi
  handler_pid=$!
  log "started the handler (pid $handler_pid)"
}

run() {
  local done_pid status defer_handler='' importing=''
  case $worker_mode in
  queue) ;;
  http)
    # The HTTP server's health check turns 200 only once this exists: the preload is done.
    ready_file=$(mktemp -u -t ollama-worker-ready.XXXXXX)
    ;;
  *)
    log "WORKER_MODE=$worker_mode is not a mode: use queue (the default, a queue endpoint) or http (a load-balancing endpoint)"
    exit 2
    ;;
  esac
  start_ollama
  # The handler's imports (~2 s) overlap Ollama's start; it takes jobs only once Ollama
  # answers. Meanwhile the boot helper checks the model and preloads it, so a job that
  # arrives during the load simply waits inside Ollama. A pull on boot is the exception:
  # until it ends the model does not exist, so the handler starts after it. So is an import
  # from the model cache (HF_MODEL): until it ends the model does not exist, or is a baked
  # one of the same name; the handler starts after it, and its imports overlap the load.
  case ${pull_on_boot,,} in
  1 | true | yes | on) defer_handler=1 ;;
  *) if [[ -n ${HF_MODEL:-} ]]; then importing=import; else start_handler "$@"; fi ;;
  esac
  # The HTTP server is the exception to both: it must answer its health check (204) through
  # a pull or an import too, or RunPod counts the worker as unreachable.
  if [[ $worker_mode == http && -z $handler_pid ]]; then start_handler "$@"; fi
  "$python" -m ollama_worker.boot "${importing:-ready}" --pid "$ollama_pid" &
  boot_pid=$!

  while :; do
    status=0
    done_pid=''
    # `wait` (unlike a foreground command) lets the TERM/INT traps run at once.
    wait -n -p done_pid ${handler_pid:+"$handler_pid"} "$ollama_pid" ${boot_pid:+"$boot_pid"} ||
      status=$?
    if [[ -z $done_pid ]]; then
      log "lost track of the worker processes (wait status $status)"
      exit 1
    elif [[ $done_pid == "$boot_pid" ]]; then
      boot_pid=''
      if ((status != 0)); then
        log "boot failed (see the boot: line above); stopping the worker"
        exit 1
      fi
      if [[ -n $importing ]]; then
        importing='' defer_handler=''
        if [[ -z $handler_pid ]]; then start_handler "$@"; fi
        HF_MODEL='' "$python" -m ollama_worker.boot ready --pid "$ollama_pid" &
        boot_pid=$!
        continue
      fi
      log "ready: $default_model is loaded"
      if [[ -n $ready_file ]]; then : >"$ready_file"; fi
      if [[ -n $defer_handler && -z $handler_pid ]]; then start_handler "$@"; fi
    elif [[ $done_pid == "$ollama_pid" ]]; then
      # ollama_pid stays set: its group may still hold an `ollama runner`, which has no
      # parent-death signal and would outlive us unless stop_all signals the group.
      log "ollama serve exited with status $status; stopping the worker"
      exit $((status == 0 ? 1 : status))
    else
      handler_pid=''
      log "handler exited with status $status; stopping Ollama"
      exit "$status"
    fi
  done
}

if [[ ${1-} == bake ]]; then
  shift
  bake "$@"
else
  run "$@"
fi
