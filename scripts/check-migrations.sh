#!/usr/bin/env bash
# A landed migration never changes (sqlx refuses to start on a database whose
# applied migrations differ from the files): for every commit after the
# baseline, no file under migrations/ that existed in the commit's parent
# (each parent, for a merge) may be modified, renamed or deleted by it — a
# change is a new migration file. Uncommitted changes to tracked migrations
# are reported too. The baseline is main's tip when this check came in; the
# history before it has known edits and is left alone.
#
# Works on a fresh clone (a shallow one is deepened first). Exits 1 and names
# each commit and file on a violation.
set -euo pipefail
cd "$(dirname "$0")/.."

BASELINE=2f7b87aba2882a6b73065a4e6b09e45accfb7304
DIR=migrations/

if ! git cat-file -e "$BASELINE^{commit}" 2>/dev/null; then
  if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
    git fetch --quiet --unshallow
  fi
fi
if ! git cat-file -e "$BASELINE^{commit}" 2>/dev/null; then
  echo "check-migrations: the baseline commit $BASELINE is not in this clone" >&2
  exit 2
fi
if ! git merge-base --is-ancestor "$BASELINE" HEAD; then
  echo "check-migrations: HEAD does not descend from the baseline $BASELINE" >&2
  exit 2
fi

problems=0
report() {
  echo "$1: $2 — a landed migration never changes; write the change as a new migration file" >&2
  problems=$((problems + 1))
}

checked=0
for commit in $(git rev-list --reverse "$BASELINE..HEAD"); do
  checked=$((checked + 1))
  for parent in $(git rev-list --parents -n 1 "$commit" | cut -d' ' -f2-); do
    # Without rename detection a rename is a deletion plus an addition.
    while IFS=$'\t' read -r status path; do
      case "$status" in
        A) ;;
        D) report "commit $(git log -1 --format='%h (%s)' "$commit")" "deletes or renames $path" ;;
        *) report "commit $(git log -1 --format='%h (%s)' "$commit")" "changes $path ($status)" ;;
      esac
    done < <(git diff-tree -r --no-renames --name-status "$parent" "$commit" -- "$DIR")
  done
done

while IFS=$'\t' read -r status path; do
  [ -n "$status" ] || continue
  case "$status" in
    A) ;;
    D) report "uncommitted" "deletes or renames $path" ;;
    *) report "uncommitted" "changes $path ($status)" ;;
  esac
done < <(git diff --no-renames --name-status HEAD -- "$DIR")

if [ "$problems" -gt 0 ]; then
  echo "check-migrations: $problems problem(s)" >&2
  exit 1
fi
echo "check-migrations: no landed migration changed in $checked commit(s) after ${BASELINE:0:7}"
