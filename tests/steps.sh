# Sourced by .ci/run and tests/run.sh: timed steps, a table of them at the end, and the caches
# the test suite keeps outside the clone.
#
#   step NAME CMD...      run CMD in the foreground as step NAME
#   step_bg NAME CMD...   start it in the background (its output goes to target/steps/NAME.log,
#                         shown when it ends); `wait_step NAME` waits for it, as a step of its
#                         own, and fails if it did
#   print_steps           the table of every step so far, with the total wall time
#
# CMD runs in a subshell with errexit on, so a shell function fails at its first failing
# command. A step's time is recorded in
# $FERRY_STEPS (a file), so that .ci/run can print the steps of tests/run.sh too: the table
# every CI log ends with.

: "${FERRY_STEPS:=$(mktemp -t ferry-steps.XXXXXX)}"
export FERRY_STEPS
: "${FERRY_STEPS_SINCE:=$(date +%s)}"
export FERRY_STEPS_SINCE

declare -A _step_pids=()
declare -A _step_logs=()

_record() { # NAME SECONDS STATUS [NOTE]
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$FERRY_STEPS"
}

# _run CMD...: runs CMD with errexit on inside it whatever the caller's options, and puts its
# status in $_status. (Called as a plain command: in `_run … || …` bash would ignore errexit
# inside it after all.)
_run() {
    local errexit=${-//[^e]/}
    set +e
    (
        set -e
        "$@"
    )
    _status=$?
    [[ -z $errexit ]] || set -e
}

step() {
    local name=$1 start=$SECONDS
    shift
    echo "==> $name" >&2
    _run "$@"
    _record "$name" $((SECONDS - start)) "$_status"
    return "$_status"
}

step_bg() {
    local name=$1
    shift
    mkdir -p target/steps
    local log="target/steps/${name//[^A-Za-z0-9_.-]/_}.log"
    echo "==> $name (in the background: $log)" >&2
    (
        start=$SECONDS
        _run "$@" >"$log" 2>&1
        _record "$name" $((SECONDS - start)) "$_status" "background"
        exit "$_status"
    ) &
    _step_pids[$name]=$!
    _step_logs[$name]=$log
}

wait_step() {
    local name=$1 start=$SECONDS status=0
    echo "==> wait: $name" >&2
    wait "${_step_pids[$name]}" || status=$?
    unset "_step_pids[$name]"
    cat "${_step_logs[$name]}" >&2
    if ((status != 0)); then
        echo "step '$name' failed ($status)" >&2
    fi
    _record "wait: $name" $((SECONDS - start)) "$status"
    return "$status"
}

_kill_tree() {
    local child
    if command -v pgrep >/dev/null; then
        for child in $(pgrep -P "$1"); do
            _kill_tree "$child"
        done
    fi
    kill "$1" 2>/dev/null || true
}

# The EXIT trap of the script that sources this: no background step (nor anything it started)
# outlives it, and the table is printed unless a parent script prints it (FERRY_STEPS_PARENT,
# the pid of the one that does).
end_steps() {
    local name
    for name in "${!_step_pids[@]}"; do
        _kill_tree "${_step_pids[$name]}"
    done
    [[ ${FERRY_STEPS_PARENT:-$$} != "$$" ]] || print_steps
}

print_steps() {
    local total=$(($(date +%s) - FERRY_STEPS_SINCE))
    {
        echo
        echo "Steps (wall seconds; a background step overlaps the ones after it):"
        awk -F'\t' -v total="$total" '
            { printf "  %-58s %6ds  %s%s\n", $1, $2, ($3 == 0 ? "ok" : "FAILED " $3), ($4 == "" ? "" : "  (" $4 ")") }
            END { printf "  %-58s %6ds\n", "total", total }' "$FERRY_STEPS"
    } >&2
}

# The caches, outside the clone: a fresh clone on a machine that ran the suite before reuses
# what does not change between runs. FERRY_CACHE=off runs everything from scratch, in the clone.
FERRY_CACHE_DIR=${FERRY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}

# link_cached PATH DIR: PATH (in the clone) becomes a link to DIR (in the cache), unless the
# clone already has its own PATH or the cache is off.
link_cached() {
    local path=$1 dir=$2
    if [[ ${FERRY_CACHE:-on} == off || -e $path || -L $path ]]; then
        return 0
    fi
    mkdir -p "$dir" "$(dirname "$path")"
    ln -s "$dir" "$path"
}

# cached_venv PATH REQUIREMENTS: a virtual environment at PATH with exactly REQUIREMENTS. With
# the cache on and no PATH of the clone's own, it lives in the cache under the hash of the
# requirements and of the Python that made it (made there, not through the link: a venv's
# scripts name the path it was made at), and PATH links to it.
cached_venv() {
    local path=$1 requirements=$2 key venv
    key=$( (python3 --version; cat "$requirements") | sha256sum | cut -c1-16)
    venv=$path
    if [[ ${FERRY_CACHE:-on} != off && ! -e $path && ! -L $path ]]; then
        venv=$FERRY_CACHE_DIR/venvs/$(basename "$(dirname "$requirements")")-$key
    fi
    # .installed: the requirements it was made with (bench/gateway/run.py reads it too).
    if ! cmp -s "$venv/.installed" "$requirements"; then
        [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
        cp "$requirements" "$venv/.installed"
    fi
    [[ $venv == "$path" ]] || ln -sfn "$venv" "$path"
}

# cached_node_modules DIR: DIR/node_modules exactly as DIR/package-lock.json says (`npm ci`).
# With the cache on, it lives in the cache under the hash of the lockfile and of the Node that
# installed it, and DIR/node_modules links to it; a new lockfile installs afresh (in DIR, then
# moved into the cache: npm ci empties what it installs into). Playwright's own browser
# download cannot work here: the tests drive the system's Chromium.
cached_node_modules() {
    local dir=$1 lock=$1/package-lock.json key modules
    if [[ ${FERRY_CACHE:-on} == off ]]; then
        (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
        return
    fi
    key=$( (node --version; cat "$lock") | sha256sum | cut -c1-16)
    # Named node_modules itself: packages find one another by walking up to a folder of that
    # name from where they really are, not from the link.
    modules=$FERRY_CACHE_DIR/node_modules/$(basename "$dir")-$key/node_modules
    [[ -L $dir/node_modules ]] && rm "$dir/node_modules"
    if ! cmp -s "$modules/.installed" "$lock"; then
        rm -rf "$dir/node_modules" "$modules"
        (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
        mkdir -p "$(dirname "$modules")"
        mv "$dir/node_modules" "$modules"
        cp "$lock" "$modules/.installed"
    fi
    rm -rf "$dir/node_modules"
    ln -s "$modules" "$dir/node_modules"
}

# Cargo judges a workspace crate fresh by the mtimes of its files, and a fresh clone's files are
# all new: with the cached target directory alone, every run would rebuild every workspace
# crate. So after the builds succeed, target/.ferry-built records the clone's path and the
# content (git's blob ids) of every file they were built from; the next run at the same path,
# from a clean tree, dates back the files whose content is unchanged, and cargo rebuilds only
# the crates that changed. Anything else leaves every file new (a rebuild, never a stale
# artifact): no record (the last build failed, or ran on a dirty tree), another path (paths are
# compiled into the binaries), or a build since the record (a fingerprint newer than it).
clean_checkout() {
    git rev-parse --is-inside-work-tree >/dev/null 2>&1 && [[ -z $(git status --porcelain) ]]
}

reuse_built_sources() {
    local record=target/.ferry-built
    if [[ -L target && -f $record/files && $(cat "$record/path" 2>/dev/null) == "$PWD" ]] &&
        clean_checkout &&
        [[ -z $(find target/ -path '*/.fingerprint/*' -newer "$record/files" -print -quit) ]]; then
        LC_ALL=C comm -z -12 <(git ls-files -s -z | LC_ALL=C sort -z) <(LC_ALL=C sort -z "$record/files") |
            cut -z -f2- | xargs -0 -r touch -h -d @946684800 --
        echo "reusing what target/ holds for the files unchanged since its last build" >&2
    fi
    rm -rf "$record"
}

record_built_sources() {
    local record=target/.ferry-built
    if [[ -L target ]] && clean_checkout; then
        mkdir -p "$record"
        printf '%s' "$PWD" >"$record/path"
        git ls-files -s -z >"$record/files"
    fi
}

# The cargo target directory from the cache (.ci/run calls this before it builds, tests/run.sh
# again: the second call finds the link made and the record used). Artifacts of dependency
# versions no longer used pile up in it: past FERRY_CACHE_MAX_GIB (30) it is emptied, and this
# run builds from scratch.
use_cached_target() {
    local cached=$FERRY_CACHE_DIR/target
    if [[ ! -L target && -d $cached ]] &&
        (($(du -s --block-size=1G "$cached" | cut -f1) > ${FERRY_CACHE_MAX_GIB:-30})); then
        echo "the cached target directory is over ${FERRY_CACHE_MAX_GIB:-30} GiB: emptied" >&2
        rm -rf "$cached"
    fi
    link_cached target "$cached"
    reuse_built_sources
}
