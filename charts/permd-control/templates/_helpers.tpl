{{/* Named templates of the permd-control chart (names mirror charts/permd's). */}}

{{- define "permd-control.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "permd-control.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "permd-control.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "permd-control.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The server's pods (Deployment, Service, PodDisruptionBudget). The migration Job's pods
have component "migrate", so the Service never routes to them. */}}
{{- define "permd-control.selectorLabels" -}}
app.kubernetes.io/name: {{ include "permd-control.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{/* Labels of every object, minus the component. */}}
{{- define "permd-control.commonLabels" -}}
helm.sh/chart: {{ include "permd-control.chart" . }}
app.kubernetes.io/name: {{ include "permd-control.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: permd
app.kubernetes.io/version: {{ .Chart.AppVersion | default "unknown" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | default "Helm" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "permd-control.labels" -}}
{{ include "permd-control.commonLabels" . }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{- define "permd-control.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "permd-control.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "permd-control.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (toString ($img.tag | default .Chart.AppVersion)) -}}
{{- end -}}
{{- end -}}

{{/* The Secret the chart creates from database.url. */}}
{{- define "permd-control.createdDatabaseSecretName" -}}
{{- printf "%s-database" (include "permd-control.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of the Secret holding PERMD_CONTROL_DATABASE (existingSecret wins over url). */}}
{{- define "permd-control.databaseSecretName" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecret -}}
{{- else if .Values.database.url -}}
{{- include "permd-control.createdDatabaseSecretName" . -}}
{{- else -}}
{{- fail "database.existingSecret (a Secret holding the PostgreSQL URL) or database.url is required" -}}
{{- end -}}
{{- end -}}

{{/* The HTTP URL of the Service, for sidecars' `source` (NOTES.txt). */}}
{{- define "permd-control.sourceUrl" -}}
{{- printf "http://%s.%s.svc:%v" (include "permd-control.fullname" .) .Release.Namespace (int64 .Values.service.httpPort) -}}
{{- end -}}

{{/* The PERMD_CONTROL_DATABASE variable, from a Secret. Args: dict "name" secret "key" key. */}}
{{- define "permd-control.databaseEnv" -}}
- name: PERMD_CONTROL_DATABASE
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end -}}
