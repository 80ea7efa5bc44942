#!/usr/bin/env bash
# Renders a profile's manifests with the image tag scripts/image.sh builds from this
# checkout (meshlane/meshlaned:<version>-<short git hash>), offline, with kubectl's
# built-in kustomize:
#   scripts/deploy/render.sh default | kubectl apply -f -
#   scripts/deploy/render.sh demo > demo.yaml
# Profiles: the directories in scripts/deploy/overlays/ (default, demo, minimal).
# KUBECTL names another kubectl (default: the one on PATH).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
kubectl=${KUBECTL:-kubectl}

usage() { echo "usage: $0 PROFILE   (one of: $(ls "$here/overlays" | tr '\n' ' '))" >&2; exit 2; }
[ $# -eq 1 ] || usage
profile=$1
[ -f "$here/overlays/$profile/kustomization.yaml" ] || usage

tag=$("$root/scripts/image.sh" --print-tag)
# podman names the image localhost/<name>; MESHLANE_IMAGE names it in another registry.
image=${MESHLANE_IMAGE:-localhost/${tag%:*}}

# A kustomization of its own beside nothing else: the profile as its base, the tag set.
# kustomize v2 (kubectl < 1.21) takes a directory only under `bases`, and only by a
# relative path.
work=$(mktemp -d "${TMPDIR:-/tmp}/meshlane-render.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat > "$work/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
bases:
  - $(realpath --relative-to="$work" "$here/overlays/$profile")
images:
  - name: localhost/${tag%:*}
    newName: $image
    newTag: "${tag##*:}"
EOF
# kustomize 5 warns on stderr that `bases` is deprecated (kustomize 2 knows nothing else).
"$kubectl" kustomize "$work" 2> >(grep -v "^# Warning: '\(bases\|patchesStrategicMerge\)' is deprecated" >&2)
