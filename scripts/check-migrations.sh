#!/usr/bin/env bash
# A landed migration never changes (sqlx refuses to start on a database whose
# applied migrations differ from the files). The rule checked here, against
# the baseline (main's tip when this check came in; the history before it
# has known edits and is left alone):
#
#   - every migration file at HEAD is byte-identical to its content in the
#     commit that first added it (a file that exists at the baseline: to its
#     content at the baseline);
#   - no migration that exists at the baseline, or was added after it, is
#     missing at HEAD (deleted or renamed);
#   - no tracked migration has uncommitted changes.
#
# A change is therefore always a new migration file. An edit followed by a
# revert passes (the content is the original again). Fixing a migration that
# has not landed yet means squashing the fix into the commit that added it
# (e.g. `git commit --fixup=<that commit>` then `git rebase -i --autosquash`),
# not a later commit.
#
# Works on a fresh clone (a shallow one is deepened first: the commit that
# added a file must be in the history). Exits 1 naming each file on a
# violation, 2 when the history needed is not there.
set -euo pipefail
cd "$(dirname "$0")/.."

BASELINE=2f7b87aba2882a6b73065a4e6b09e45accfb7304
DIR=migrations

if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  git fetch --quiet --unshallow
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
  echo "check-migrations: $1 — a landed migration never changes; write the change as a new migration file" \
       "(one that has not landed yet: squash the change into the commit that added it)" >&2
  problems=$((problems + 1))
}

# The commit that first added `path` after the baseline. Merges are not
# diffed (no -m), so a file a merged branch added is found in that branch.
first_added() {
  git log --full-history --diff-filter=A --format=%H "$BASELINE..HEAD" -- "$1" | tail -n 1
}

# Every migration that must still be there: the baseline's and every one
# added since.
expected=$(
  {
    git ls-tree -r --name-only "$BASELINE" -- "$DIR/"
    git log --full-history --diff-filter=A --name-only --format= "$BASELINE..HEAD" -- "$DIR/"
  } | sed '/^$/d' | sort -u
)
while IFS= read -r path; do
  [ -n "$path" ] || continue
  if ! git cat-file -e "HEAD:$path" 2>/dev/null; then
    report "$path is missing at HEAD (deleted or renamed)"
  fi
done <<<"$expected"

checked=0
while IFS= read -r path; do
  [ -n "$path" ] || continue
  checked=$((checked + 1))
  if git cat-file -e "$BASELINE:$path" 2>/dev/null; then
    origin=$BASELINE
    what="its content at the baseline ${BASELINE:0:7}"
  else
    origin=$(first_added "$path")
    what="its content in $(git log -1 --format='%h (%s)' "$origin" 2>/dev/null), which added it"
  fi
  if [ -z "$origin" ]; then
    report "$path: the commit that added it is not in the history"
  elif [ "$(git rev-parse "HEAD:$path")" != "$(git rev-parse "$origin:$path")" ]; then
    changed_by=$(git log --format='%h (%s)' "$origin..HEAD" -- "$path" | head -n 1)
    report "$path differs from $what; last changed by ${changed_by:-a merge}"
  fi
done < <(git ls-tree -r --name-only HEAD -- "$DIR/")

while IFS=$'\t' read -r status path; do
  [ -n "$status" ] || continue
  case "$status" in
    A) ;;
    D) report "uncommitted: deletes or renames $path" ;;
    *) report "uncommitted: changes $path ($status)" ;;
  esac
done < <(git diff --no-renames --name-status HEAD -- "$DIR/")

if [ "$problems" -gt 0 ]; then
  echo "check-migrations: $problems problem(s)" >&2
  exit 1
fi
echo "check-migrations: $checked migration(s) as first committed, none missing (baseline ${BASELINE:0:7})"
