#!/usr/bin/env bash
# `make k8s-deploy OVERLAY=dev|prod`: apply an overlay in the order a release needs.
#   1. everything but the servers and the migrations (namespace, ConfigMaps, Secrets,
#      NetworkPolicies, Services, HPAs, PDBs, databases, NATS, collector);
#   2. the migration Jobs of this release (the previous ones are deleted first: a Job
#      is immutable), waited for until every one has completed;
#   3. the Deployments, then each rollout is waited for.
# Migrations must be backward compatible (expand, then contract a release later):
# the previous release's pods keep serving while they run.
set -euo pipefail
cd "$(dirname "$0")/.."
overlay="${1:?usage: k8s_deploy.sh dev|prod}"
dir="k8s/overlays/$overlay"
ns=mall
test -f "$dir/kustomization.yaml" || { echo "no overlay $dir" >&2; exit 2; }
# Without a context kubectl talks to 127.0.0.1:8080, which is the gateway under `make run`.
ctx="$(kubectl config current-context 2>/dev/null)" || { echo "kubectl has no current context: refusing to deploy" >&2; exit 2; }
echo "deploying $dir to context $ctx, namespace $ns"
rendered="$(mktemp)"
trap 'rm -f "$rendered"' EXIT
kubectl kustomize "$dir" > "$rendered"

kubectl apply -f "$rendered" -l 'app.kubernetes.io/component notin (server,migration)'

kubectl -n "$ns" delete job -l app.kubernetes.io/component=migration --ignore-not-found --wait=true
kubectl apply -f "$rendered" -l app.kubernetes.io/component=migration
for job in $(kubectl -n "$ns" get job -l app.kubernetes.io/component=migration -o name); do
  # whichever comes first: complete (go on) or failed (stop: the previous release keeps serving)
  kubectl -n "$ns" wait --for=condition=complete "$job" --timeout=600s >/dev/null & complete=$!
  kubectl -n "$ns" wait --for=condition=failed "$job" --timeout=600s >/dev/null & failed=$!
  if wait -n "$complete" "$failed" && ! kill -0 "$complete" 2>/dev/null; then
    kill "$failed" 2>/dev/null || true
    echo "$job complete"
  else
    kill "$complete" "$failed" 2>/dev/null || true
    echo "$job failed or timed out: stopping before the rollout (kubectl -n $ns logs $job)" >&2
    exit 1
  fi
done

kubectl apply -f "$rendered" -l app.kubernetes.io/component=server
for deploy in members points orders community gateway; do
  kubectl -n "$ns" rollout status "deploy/$deploy" --timeout=600s
done
echo "deployed $overlay"
