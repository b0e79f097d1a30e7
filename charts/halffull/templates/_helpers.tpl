{{/* Names, labels and images shared by the chart's templates. */}}

{{- define "halffull.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name: the release name, prefixed with the chart name unless it holds it. */}}
{{- define "halffull.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "halffull.selectorLabels" -}}
app.kubernetes.io/name: {{ include "halffull.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "halffull.labels" -}}
{{ include "halffull.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: halffull
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "halffull.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "halffull.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
An image repository: the explicit one, else image.registry plus the image's name, as pushed by
`REGISTRY=... make images`. Without either there is no image anyone publishes: fail here with
the fix rather than install pods that end in ImagePullBackOff.
*/}}
{{- define "halffull.repository" -}}
{{- $root := index . 0 -}}
{{- $repo := index . 1 -}}
{{- $name := index . 2 -}}
{{- if $repo -}}
{{- $repo -}}
{{- else if $root.Values.image.registry -}}
{{- printf "%s/%s" (trimSuffix "/" $root.Values.image.registry) $name -}}
{{- else -}}
{{- fail (printf "image.registry is required: build and push the images with `REGISTRY=registry.example.com/halffull make images`, then install with `--set image.registry=registry.example.com/halffull` (or set the %s repository)" $name) -}}
{{- end -}}
{{- end -}}

{{- define "halffull.image" -}}
{{- $img := .Values.image -}}
{{- $repo := include "halffull.repository" (list . $img.repository "operator") -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "halffull.engineImage" -}}
{{- $repo := include "halffull.repository" (list . .Values.engineImage.repository "vllm-larry") -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.engineImage.tag) -}}
{{- end -}}

{{- define "halffull.routerImage" -}}
{{- $repo := include "halffull.repository" (list . .Values.routerImage.repository "router") -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.routerImage.tag) -}}
{{- end -}}

{{/*
The access the operator uses, namespace-scoped part. Each rule names the code that needs it;
tests/chart/test_rbac.py runs the operator with exactly these rights against a real API server.
*/}}
{{- define "halffull.namespacedRules" -}}
# The LLMServices: listed and watched (kopf's event handlers feed the operator's cache; a write
# that met a conflict re-reads one object with a list by name); it writes only their status.
- apiGroups: ["serving.halffull.dev"]
  resources: ["llmservices"]
  verbs: ["list", "watch"]
- apiGroups: ["serving.halffull.dev"]
  resources: ["llmservices/status"]
  verbs: ["patch"]
# The children, written by server-side apply (which is a create when the object is missing) and
# removed when no longer wanted; watched for drift.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# One PodDisruptionBudget per component, and the engines' NetworkPolicy (listed even when
# switched off, so that one left from before is removed).
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# The LLMServices' pods: watched for readiness and image pulls, read for the routers' endpoint
# tables. `patch` (operator.tuningFastPath) only sets the config-hash annotation after a
# ConfigMap changed, so the kubelet projects the new tuning at once instead of at its next
# periodic sync (docs/operator.md).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"{{ if .Values.operator.tuningFastPath }}, "patch"{{ end }}]
# Events on LLMServices (the operator's and kopf's).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{/* NetworkPolicyPeers allowed to scrape engine pods, as JSON: the operator pod itself (it reads
engine /metrics when no Prometheus is configured) and workloadNetworkPolicy.scrapersFrom. */}}
{{- define "halffull.metricsScrapers" -}}
{{- $operator := dict
      "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace))
      "podSelector" (dict "matchLabels" (include "halffull.selectorLabels" . | fromYaml)) -}}
{{- prepend .Values.workloadNetworkPolicy.scrapersFrom $operator | toJson -}}
{{- end -}}
