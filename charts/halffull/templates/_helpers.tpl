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

{{- define "halffull.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "halffull.engineImage" -}}
{{- printf "%s:%s" .Values.engineImage.repository (default .Chart.AppVersion .Values.engineImage.tag) -}}
{{- end -}}

{{- define "halffull.routerImage" -}}
{{- printf "%s:%s" .Values.routerImage.repository (default .Chart.AppVersion .Values.routerImage.tag) -}}
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
# Engine pods: watched for readiness, read for the routers' endpoint tables. Never written.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Events on LLMServices (the operator's and kopf's).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
