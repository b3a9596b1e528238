#!/bin/sh
echo "coverage is not available in this offline setup (see DEVELOPERS.md)" >&2
exit 1
