#!/bin/sh
# Install ADTN Studio for the current user (no root needed), or remove it.
#
#   ./install.sh              install into ~/.local (application in ~/.local/opt/adtn-studio)
#   ./install.sh --uninstall  remove everything this script installed
#
# XDG_DATA_HOME is honoured for the menu entry and the icon.
set -eu

NAME=adtn-studio
HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX="$HOME/.local"
DATA="${XDG_DATA_HOME:-$PREFIX/share}"
APP_DIR="$PREFIX/opt/$NAME"
BIN_LINK="$PREFIX/bin/$NAME"
DESKTOP_FILE="$DATA/applications/$NAME.desktop"
ICON_FILE="$DATA/icons/hicolor/512x512/apps/$NAME.png"

refresh_menus() {
    if command -v update-desktop-database >/dev/null 2>&1; then
        update-desktop-database -q "$DATA/applications" || true
    fi
    if command -v gtk-update-icon-cache >/dev/null 2>&1; then
        gtk-update-icon-cache -q -t "$DATA/icons/hicolor" || true
    fi
}

uninstall() {
    rm -rf "$APP_DIR"
    rm -f "$BIN_LINK" "$DESKTOP_FILE" "$ICON_FILE"
    refresh_menus
    echo "ADTN Studio removed."
}

install() {
    [ -x "$HERE/$NAME/$NAME" ] || { echo "install.sh: $HERE/$NAME/$NAME is missing" >&2; exit 1; }
    rm -rf "$APP_DIR"
    mkdir -p "$APP_DIR" "$(dirname "$BIN_LINK")" "$(dirname "$DESKTOP_FILE")" "$(dirname "$ICON_FILE")"
    cp -R "$HERE/$NAME/." "$APP_DIR/"
    cp "$HERE/install.sh" "$APP_DIR/install.sh"  # so that it can uninstall later
    ln -sf "$APP_DIR/$NAME" "$BIN_LINK"
    cp "$HERE/$NAME.png" "$ICON_FILE"
    # The menu entry names the program by its full path: ~/.local/bin may not be on PATH.
    sed "s|^Exec=$NAME|Exec=$APP_DIR/$NAME|" "$HERE/$NAME.desktop" >"$DESKTOP_FILE"
    refresh_menus
    echo "ADTN Studio installed in $APP_DIR"
    echo "Start it from the applications menu, or run: $BIN_LINK  (check: $BIN_LINK selftest)"
    echo "Remove it with: $APP_DIR/install.sh --uninstall"
}

case "${1:-}" in
    "") install ;;
    --uninstall) uninstall ;;
    *) echo "usage: $0 [--uninstall]" >&2; exit 2 ;;
esac
