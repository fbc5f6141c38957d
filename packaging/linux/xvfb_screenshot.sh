#!/bin/sh
# Start a program on a virtual X screen (Xvfb), wait, and save a screenshot of the screen.
#
#   packaging/linux/xvfb_screenshot.sh OUT.png SECONDS PROGRAM [ARGS...]
#   e.g. packaging/linux/xvfb_screenshot.sh shot.png 20 dist/adtn-studio/adtn-studio
#
# Needs Debian's xvfb (xvfb-run) and imagemagick (import). Proves that the program opens its
# window on a real X11 display (Qt's xcb platform), not only offscreen.
set -eu
[ $# -ge 3 ] || { sed -n '2,8p' "$0"; exit 2; }
OUT=$1 SECONDS_TO_WAIT=$2
shift 2
export OUT SECONDS_TO_WAIT
unset QT_QPA_PLATFORM
# shellcheck disable=SC2016  # the inner script expands its own variables
xvfb-run --auto-servernum --server-args="-screen 0 1600x1000x24" sh -c '
    "$@" &
    pid=$!
    sleep "$SECONDS_TO_WAIT"
    kill -0 "$pid" || { echo "xvfb_screenshot: the program exited early" >&2; exit 1; }
    import -window root "$OUT"
    kill "$pid"
    wait "$pid" || true
' sh "$@"
echo "xvfb_screenshot: wrote $OUT"
