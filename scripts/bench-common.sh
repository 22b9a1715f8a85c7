# Helpers shared by scripts/bench-hds.sh and scripts/bench-orthanc.sh (sourced, not run).

# Removes a finished run's data dir, or with BENCH_TRASH_DIR set moves it there (one rename)
# for the caller to delete after all runs: on a file system without a journal, ext4 allocates
# new inodes by skipping over those freed in the last ~35 s, so deleting thousands of files
# right before the next run made that run's STOW pay for the cleanup (up to ~0.5 ms per new
# file on the benchmark VM, whichever server it was).
discard_run_dir() {
    if [[ -n "${BENCH_TRASH_DIR:-}" ]]; then
        mv "$1" "$BENCH_TRASH_DIR/$(basename "$(dirname "$1")")-$(basename "$1")"
    else
        rm -rf "$1"
    fi
}

# Discards every run dir left under $1 (a script's work dir), for its EXIT trap.
discard_run_dirs_under() {
    local leftover
    for leftover in "$1"/run-*; do
        if [[ -e "$leftover" ]]; then discard_run_dir "$leftover"; fi
    done
}

# A free TCP port on the loopback address.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
