#!/usr/bin/env bash
# Prepare a dataset: downloads the raw data (real URL / Hugging Face) unless a local SOURCE is given, then writes
# data/NAME/{train,val[,test]}.bin and meta.json. Options after SOURCE go to prepare.py (e.g. --out_dir DIR).
#   ./get_data.sh enwik8                       ./get_data.sh enwik8 path/to/enwik8.zip
#   ./get_data.sh wikitext103 path/to/wikitext-103-raw/      (folder with wiki.{train,valid,test}.raw)
#   ./get_data.sh tinystories path/to/TinyStories-train.txt  (or a folder with the official .txt files)
#   ./get_data.sh shakespeare_char path/to/input.txt
set -euo pipefail

NAMES="enwik8 wikitext103 tinystories shakespeare_char"
usage() { echo "usage: $0 {${NAMES// /|}} [SOURCE] [prepare.py options]" >&2; exit 2; }

[[ $# -ge 1 ]] || usage
name=$1
shift
[[ " $NAMES " == *" $name "* ]] || usage

args=()
if [[ $# -ge 1 && $1 != -* ]]; then
    args=(--source "$1")
    shift
fi
script="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/data/$name/prepare.py"
exec "${PYTHON:-python}" "$script" "${args[@]}" "$@"
