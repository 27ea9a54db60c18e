{{- define "otelbpf.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "otelbpf.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "otelbpf.selectorLabels" -}}
app.kubernetes.io/name: {{ include "otelbpf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "otelbpf.labels" -}}
{{ include "otelbpf.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The agent's config.yaml: the chart's values, then .Values.config merged over them. */}}
{{- define "otelbpf.config" -}}
{{- $cfg := dict "sensors" .Values.sensors "memory_limit_mib" (int .Values.memoryLimitMiB) -}}
{{- $_ := set $cfg "security" (dict "shipped_policies" .Values.security.shippedPolicies "enforce" .Values.security.enforce "policy_dir" "/etc/otelbpf/policies") -}}
{{- $_ := set $cfg "store" (dict "path" (printf "%s/otelbpf.duckdb" .Values.stateDir)) -}}
{{- $_ := set $cfg "identity" (dict "kubernetes_api" .Values.kubernetesApi.enabled) -}}
{{- if .Values.ui.enabled -}}
{{- $_ := set $cfg "ui" (printf "127.0.0.1:%d" (int .Values.ui.port)) -}}
{{- $_ := set $cfg "console" false -}}
{{- else -}}
{{- $_ := set $cfg "otlp_endpoint" (required "otlp.endpoint is required unless ui.enabled (the local store and UI)" .Values.otlp.endpoint) -}}
{{- $_ := set $cfg "otlp_protocol" .Values.otlp.protocol -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $cfg (deepCopy .Values.config)) -}}
{{- end -}}

{{- define "otelbpf.policies" -}}
{{- range $name, $body := .Values.policies }}
{{ $name }}: |
{{ $body | indent 2 }}
{{- end -}}
{{- end -}}
