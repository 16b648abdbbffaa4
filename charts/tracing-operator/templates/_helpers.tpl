{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "tracing-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name used for object names: the release name, plus the chart name unless
the release name already contains it (so `helm install tracing-operator` gives
`tracing-operator`, not `tracing-operator-tracing-operator`).
*/}}
{{- define "tracing-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version for the helm.sh/chart label.
*/}}
{{- define "tracing-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "tracing-operator.labels" -}}
helm.sh/chart: {{ include "tracing-operator.chart" . }}
{{ include "tracing-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: tracing-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels that select the operator's pods; they never change across upgrades
because a Deployment's selector is immutable.
*/}}
{{- define "tracing-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tracing-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "tracing-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tracing-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image: repository:tag, or repository@digest when a digest is set.
*/}}
{{- define "tracing-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The Lease the operator elects its leader with; fixed by the binary.
*/}}
{{- define "tracing-operator.leaseName" -}}
tracing-operator
{{- end }}

{{/*
The namespaces collectors may run in, as a JSON list: the release namespace (the
operator's own, always allowed: the default collector namespace) and
collector.allowedNamespaces; ["*"] for any namespace.
*/}}
{{- define "tracing-operator.collectorNamespaces" -}}
{{- $listed := .Values.collector.allowedNamespaces }}
{{- if has "*" $listed }}
{{- if gt (len $listed) 1 }}
{{- fail "collector.allowedNamespaces: \"*\" (any namespace) cannot be combined with namespace names" }}
{{- end }}
{{- list "*" | toJson }}
{{- else }}
{{- prepend (without $listed .Release.Namespace) .Release.Namespace | uniq | toJson }}
{{- end }}
{{- end }}

{{/*
collector.allowedImages as a JSON list, without trailing slashes (prefixes match
whole path segments, so the slash is implied).
*/}}
{{- define "tracing-operator.collectorImages" -}}
{{- $prefixes := list }}
{{- range .Values.collector.allowedImages }}
{{- $prefix := regexReplaceAll "/+$" (trim .) "" }}
{{- if not $prefix }}
{{- fail (printf "collector.allowedImages: %q is not a repository prefix" .) }}
{{- end }}
{{- $prefixes = append $prefixes $prefix }}
{{- end }}
{{- $prefixes | toJson }}
{{- end }}

{{/*
The collector image a policy gets when it sets none: the operator binary's
DEFAULT_COLLECTOR_IMAGE (tests/chart.rs keeps the two equal). The admission
policy judges it like any other image.
*/}}
{{- define "tracing-operator.defaultCollectorImage" -}}
otel/opentelemetry-collector-contrib:0.161.0
{{- end }}

{{/*
What the operator does in each collector namespace (a Role there, or a
ClusterRole when collector.allowedNamespaces is ["*"]).
*/}}
{{- define "tracing-operator.collectorRules" -}}
# Create and delete a policy's collector Deployment. Changing it is the
# ClusterRole's patch (the operator patches workloads everywhere), but a
# server-side apply of a Deployment that does not exist yet is a create and
# needs this verb; without it the operator cannot start new code here.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["create", "delete"]
# The collector's configuration (ConfigMap) and its OTLP endpoint (Service),
# created, updated and deleted with the collector Deployment.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["create", "patch", "delete"]
# Each collector tier's PodDisruptionBudget (a drain takes one pod at a time)
# and, with collector.autoscaling, the routers' HorizontalPodAutoscaler.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["create", "patch", "delete"]
# Check that a Secret a policy references (tls.caSecretRef, headersSecretRef)
# exists and has the needed keys, by name only (no list or watch). The
# collector reads its Secrets in its own namespace, so only here.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
