#!/bin/bash
# Tries to change the file $1 in several ways and prints, for each, whether
# it worked, then the file's content and mode.
file="$1"
attempt() {
  if (eval "$2") 2>/dev/null; then echo "$1: allowed"; else echo "$1: denied"; fi
}
attempt append "echo appended >> '$file'"
attempt overwrite "echo overwritten > '$file'"
attempt truncate "truncate -s 0 '$file'"
attempt chmod "chmod 0666 '$file'"
echo "content: $(cat "$file")"
