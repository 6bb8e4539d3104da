# apt_get ARGS...: apt-get with ARGS (sourced, not run), waiting up to 5
# minutes for another apt or dpkg to let go of its lock, as a fresh
# machine's automatic updates hold it for a while after boot.  A command
# in front of apt-get (sudo, env) goes in APT_PREFIX (an array).
apt_get() {
    local deadline=$((SECONDS + 300)) out status
    while :; do
        status=0
        out=$(${APT_PREFIX[@]+"${APT_PREFIX[@]}"} apt-get -o DPkg::Lock::Timeout=300 "$@" 2>&1) || status=$?
        if [ $status -eq 0 ] || [ $SECONDS -ge $deadline ] ||
            ! grep -q "Could not get lock" <<<"$out"; then
            [ -z "$out" ] || printf '%s\n' "$out"
            return $status
        fi
        echo "paracell: apt-get is waiting for another apt to finish" >&2
        sleep 5
    done
}
