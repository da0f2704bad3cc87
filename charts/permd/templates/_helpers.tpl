{{/*
Named templates of the permd chart.

Public (for an application chart that has permd as a dependency; see README.md):
  permd.sidecar                YAML {containers: [permd], volumes: [...]}; use with fromYaml
  permd.sidecar.containers     the containers list items (the permd container)
  permd.sidecar.volumes        the volumes list items it needs
  permd.sidecar.podAnnotations checksum/permd-config (+ prometheus.io/* on the admin port)
  permd.sidecar.podLabels      permd.io/sidecar: "true" (what the PodMonitor selects)
  permd.sidecar.appVolumeMounts  the Unix socket mount for the app container (unixSocket.enabled)
Each takes either the caller's root context (`.`: permd's values are then read from
.Values.permd when called from another chart) or
`dict "context" $ "values" .Values.<alias>` when the dependency has another alias.

Internal helpers take a "ctx": a map with Values, Release, Chart (permd's own root context, or
the one permd.ctx builds for a caller).
*/}}

{{/* Fill .out with Values/Release/Chart for permd from the caller's argument .in. */}}
{{- define "permd.ctx" -}}
{{- $in := .in -}}
{{- $root := $in -}}
{{- $vals := dict -}}
{{- if hasKey $in "context" -}}
{{- $root = $in.context -}}
{{- $vals = $in.values | default dict -}}
{{- else if and (ne $root.Chart.Name "permd") (kindIs "map" $root.Values.permd) -}}
{{- $vals = $root.Values.permd -}}
{{- else -}}
{{- $vals = $root.Values -}}
{{- end -}}
{{- $chart := $root.Chart -}}
{{- if and $root.Subcharts (hasKey $root.Subcharts "permd") -}}
{{- $chart = (index $root.Subcharts "permd").Chart -}}
{{- end -}}
{{- $_ := set .out "Values" $vals -}}
{{- $_ := set .out "Release" $root.Release -}}
{{- $_ := set .out "Chart" $chart -}}
{{- end -}}

{{- define "permd.name" -}}
{{- default "permd" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "permd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "permd.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "permd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "permd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "permd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "permd.labels" -}}
helm.sh/chart: {{ include "permd.chart" . }}
{{ include "permd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | default "unknown" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | default "Helm" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "permd.configMapName" -}}
{{- printf "%s-config" (include "permd.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "permd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "permd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret holding the API key, or "" when there is none. */}}
{{- define "permd.apiKeySecretName" -}}
{{- if .Values.apiKey.existingSecret -}}
{{- .Values.apiKey.existingSecret -}}
{{- else if .Values.apiKey.value -}}
{{- printf "%s-api-key" (include "permd.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "permd.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (toString ($img.tag | default .Chart.AppVersion)) -}}
{{- end -}}
{{- end -}}

{{/* The config keys written to permd.yaml (everything but the addresses, which go in PERMD_*_ADDR; empty ones left out). */}}
{{- define "permd.configMap" -}}
{{- $_ := required "config.source is required (e.g. https://control.example.com/base or file:///etc/permd/snapshot.yaml)" .Values.config.source -}}
{{- $cfg := dict -}}
{{- range $k, $v := .Values.config -}}
{{- if and (ne $k "http_addr") (ne $k "grpc_addr") (not (kindIs "invalid" $v)) (ne (toString $v) "") (not (and (kindIs "slice" $v) (empty $v))) -}}
{{- if kindIs "float64" $v -}}
{{- $_ := set $cfg $k (int64 $v) -}}
{{- else -}}
{{- $_ := set $cfg $k $v -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Checksum of everything the ConfigMap holds, for the pod template annotation. */}}
{{- define "permd.configChecksum" -}}
{{- printf "%s\n---\n%s" (include "permd.configMap" .) (.Values.snapshot | default "") | sha256sum -}}
{{- end -}}

{{/*
Effective listen addresses. Args: dict "ctx" $ctx "role" ("sidecar" | "shared").
Shared (deployment/daemonset): 0.0.0.0, since a shared PDP must be reachable from other pods.
Sidecar: loopback, or the Unix sockets with unixSocket.enabled; the pod IP only gets the admin
listener. config.http_addr / config.grpc_addr win when set (an explicit opt-in, e.g. to expose
a sidecar's decision API on the pod IP).
*/}}
{{- define "permd.httpAddr" -}}
{{- $v := .ctx.Values -}}
{{- if $v.config.http_addr -}}
{{- $v.config.http_addr -}}
{{- else if eq .role "shared" -}}
0.0.0.0:7766
{{- else if $v.unixSocket.enabled -}}
{{- printf "unix:%s/http.sock" (trimSuffix "/" $v.unixSocket.mountPath) -}}
{{- else -}}
127.0.0.1:7766
{{- end -}}
{{- end -}}

{{- define "permd.grpcAddr" -}}
{{- $v := .ctx.Values -}}
{{- if $v.config.grpc_addr -}}
{{- $v.config.grpc_addr -}}
{{- else if eq .role "shared" -}}
0.0.0.0:7767
{{- else if $v.unixSocket.enabled -}}
{{- printf "unix:%s/grpc.sock" (trimSuffix "/" $v.unixSocket.mountPath) -}}
{{- else -}}
127.0.0.1:7767
{{- end -}}
{{- end -}}

{{/*
The admin listener (admin_addr): /healthz, /readyz and /metrics, unauthenticated, never a
check endpoint. Always on the pod IP, in every mode, so kubelet probes and Prometheus reach it.
*/}}
{{- define "permd.adminAddr" -}}
{{- printf "0.0.0.0:%v" (int64 .Values.admin.port) -}}
{{- end -}}

{{/* The TCP port of an address ("" for a unix: address). */}}
{{- define "permd.addrPort" -}}
{{- if not (hasPrefix "unix:" .) -}}
{{- regexFind "[0-9]+$" . -}}
{{- end -}}
{{- end -}}

{{/* "true" when the address is reachable on the pod IP (TCP, not loopback). */}}
{{- define "permd.addrExposed" -}}
{{- if and (not (hasPrefix "unix:" .)) (not (regexMatch "^(127\\.|localhost:|\\[::1\\]:)" .)) (ne (include "permd.addrPort" .) "") -}}
true
{{- end -}}
{{- end -}}

{{/* The Secret holding the bearer keys file of a shared permd. */}}
{{- define "permd.authKeysSecretName" -}}
{{- .Values.auth.keys.existingSecret | default (printf "%s-auth-keys" (include "permd.fullname" .)) -}}
{{- end -}}

{{/* The kubernetes.io/tls Secret of a shared permd's HTTP and gRPC ports. */}}
{{- define "permd.tlsSecretName" -}}
{{- .Values.auth.tls.secretName | default (printf "%s-tls" (include "permd.fullname" .)) -}}
{{- end -}}

{{/*
"true" when a shared permd authenticates its clients (keys or client certificates); fails the
render when it would not and insecureListen does not say so (permd would refuse to start).
*/}}
{{- define "permd.sharedAuth" -}}
{{- $a := .Values.auth -}}
{{- $mtls := and $a.tls.enabled $a.tls.clientCa.enabled -}}
{{- if and $a.tls.clientCa.enabled (not $a.tls.enabled) -}}
{{- fail "auth.tls.clientCa.enabled needs auth.tls.enabled (client certificates are asked for in the TLS handshake)" -}}
{{- end -}}
{{- if and $a.tls.enabled (not $a.tls.secretName) (not $a.tls.certManager.enabled) -}}
{{- fail "auth.tls.enabled needs auth.tls.secretName (a kubernetes.io/tls Secret) or auth.tls.certManager.enabled" -}}
{{- end -}}
{{- if and $a.tls.certManager.enabled (not $a.tls.certManager.issuerRef.name) -}}
{{- fail "auth.tls.certManager.enabled needs auth.tls.certManager.issuerRef.name" -}}
{{- end -}}
{{- if or $a.keys.enabled $mtls -}}
true
{{- else if not $a.insecureListen -}}
{{- fail "a shared permd (deployment/daemonset) listens on the pod IP: enable auth.keys or auth.tls.clientCa, or set auth.insecureListen: true to serve anyone who can connect" -}}
{{- end -}}
{{- end -}}

{{/* Volume names, prefixed so they do not clash with the application's. */}}
{{- define "permd.volumes" -}}
{{- $ctx := .ctx -}}
{{- if ne .role "injected" }}
- name: permd-config
  configMap:
    name: {{ include "permd.configMapName" $ctx }}
{{- end }}
- name: permd-cache
  {{- if $ctx.Values.cache.sizeLimit }}
  emptyDir:
    sizeLimit: {{ $ctx.Values.cache.sizeLimit }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- if and $ctx.Values.unixSocket.enabled (ne .role "shared") }}
- name: permd-socket
  emptyDir: {}
{{- end }}
{{- if eq .role "shared" }}
{{- $a := $ctx.Values.auth }}
{{- if $a.keys.enabled }}
- name: permd-auth-keys
  secret:
    secretName: {{ include "permd.authKeysSecretName" $ctx }}
    defaultMode: 0400
{{- end }}
{{- if $a.tls.enabled }}
- name: permd-tls
  secret:
    secretName: {{ include "permd.tlsSecretName" $ctx }}
    defaultMode: 0400
{{- if and $a.tls.clientCa.enabled $a.tls.clientCa.secretName }}
- name: permd-client-ca
  secret:
    secretName: {{ $a.tls.clientCa.secretName }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
The permd container. Args: dict "ctx" $ctx "role" ("sidecar" | "shared" | "injected").
injected: like sidecar, but configured entirely through PERMD_* environment (no ConfigMap).
*/}}
{{- define "permd.container" -}}
{{- $ctx := .ctx -}}
{{- $v := $ctx.Values -}}
{{- $addrRole := ternary "shared" "sidecar" (eq .role "shared") -}}
{{- $http := include "permd.httpAddr" (dict "ctx" $ctx "role" $addrRole) -}}
{{- $grpc := include "permd.grpcAddr" (dict "ctx" $ctx "role" $addrRole) -}}
{{- $admin := include "permd.adminAddr" $ctx -}}
{{- $adminPort := include "permd.addrPort" $admin -}}
{{- $httpExposed := include "permd.addrExposed" $http -}}
{{- $grpcExposed := include "permd.addrExposed" $grpc -}}
{{- range $name, $addr := dict "http_addr" $http "grpc_addr" $grpc -}}
{{- if eq (include "permd.addrPort" $addr) $adminPort -}}
{{- fail (printf "config.%s (%s) uses admin.port %s: give the admin listener its own port" $name $addr $adminPort) -}}
{{- end -}}
{{- end -}}
{{- $secret := include "permd.apiKeySecretName" $ctx -}}
name: permd
image: {{ include "permd.image" $ctx | quote }}
imagePullPolicy: {{ $v.image.pullPolicy }}
{{- if eq .role "injected" }}
args:
  - serve
{{- else }}
args:
  - serve
  - --config
  - /etc/permd/permd.yaml
{{- end }}
ports:
  {{- if $httpExposed }}
  - name: permd-http
    containerPort: {{ include "permd.addrPort" $http }}
    protocol: TCP
  {{- end }}
  {{- if $grpcExposed }}
  - name: permd-grpc
    containerPort: {{ include "permd.addrPort" $grpc }}
    protocol: TCP
  {{- end }}
  - name: permd-admin
    containerPort: {{ $adminPort }}
    protocol: TCP
env:
  - name: PERMD_HTTP_ADDR
    value: {{ $http | quote }}
  - name: PERMD_GRPC_ADDR
    value: {{ $grpc | quote }}
  - name: PERMD_ADMIN_ADDR
    value: {{ $admin | quote }}
  {{- if eq .role "injected" }}
  {{- $cfg := include "permd.configMap" $ctx | fromYaml }}
  {{- range $k := keys $cfg | sortAlpha }}
  {{- $val := index $cfg $k }}
  - name: {{ printf "PERMD_%s" (upper $k) }}
    {{- if kindIs "slice" $val }}
    value: {{ join "," $val | quote }}
    {{- else }}
    value: {{ ternary (int64 $val) $val (kindIs "float64" $val) | toString | quote }}
    {{- end }}
  {{- end }}
  {{- end }}
  {{- if $secret }}
  - name: PERMD_API_KEY
    valueFrom:
      secretKeyRef:
        name: {{ $secret }}
        key: {{ $v.apiKey.secretKey }}
        {{- if and (eq .role "injected") $v.webhook.apiKeySecretOptional }}
        optional: true
        {{- end }}
  {{- end }}
  {{- if eq .role "shared" }}
  {{- $_ := include "permd.sharedAuth" $ctx }}
  {{- if $v.auth.keys.enabled }}
  - name: PERMD_AUTH_KEYS_FILE
    value: {{ printf "/etc/permd-auth/%s" $v.auth.keys.secretKey | quote }}
  {{- end }}
  {{- if $v.auth.tls.enabled }}
  - name: PERMD_TLS_CERT
    value: /etc/permd-tls/tls.crt
  - name: PERMD_TLS_KEY
    value: /etc/permd-tls/tls.key
  {{- if $v.auth.tls.clientCa.enabled }}
  - name: PERMD_TLS_CLIENT_CA
    value: {{ printf "%s/%s" (ternary "/etc/permd-client-ca" "/etc/permd-tls" (not (empty $v.auth.tls.clientCa.secretName))) $v.auth.tls.clientCa.secretKey | quote }}
  {{- end }}
  {{- end }}
  {{- if $v.auth.insecureListen }}
  - name: PERMD_INSECURE_LISTEN
    value: "true"
  {{- end }}
  {{- end }}
  {{- with $v.env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- if $v.probes.enabled }}
startupProbe:
  httpGet:
    path: /healthz
    port: permd-admin
  {{- toYaml $v.probes.startup | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: permd-admin
  {{- toYaml $v.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: permd-admin
  {{- toYaml $v.probes.readiness | nindent 2 }}
{{- end }}
resources:
  {{- toYaml $v.resources | nindent 2 }}
securityContext:
  {{- toYaml $v.securityContext | nindent 2 }}
volumeMounts:
  {{- if ne .role "injected" }}
  - name: permd-config
    mountPath: /etc/permd
    readOnly: true
  {{- end }}
  - name: permd-cache
    mountPath: {{ $v.config.cache_dir | default "/var/cache/permd" }}
  {{- if and $v.unixSocket.enabled (ne .role "shared") }}
  - name: permd-socket
    mountPath: {{ $v.unixSocket.mountPath }}
  {{- end }}
  {{- if eq .role "shared" }}
  {{- if $v.auth.keys.enabled }}
  - name: permd-auth-keys
    mountPath: /etc/permd-auth
    readOnly: true
  {{- end }}
  {{- if $v.auth.tls.enabled }}
  - name: permd-tls
    mountPath: /etc/permd-tls
    readOnly: true
  {{- if and $v.auth.tls.clientCa.enabled $v.auth.tls.clientCa.secretName }}
  - name: permd-client-ca
    mountPath: /etc/permd-client-ca
    readOnly: true
  {{- end }}
  {{- end }}
  {{- end }}
{{- end -}}

{{/* Pod annotations for a pod running permd. Args: dict "ctx" $ctx "role" ... */}}
{{- define "permd.podAnnotationsFor" -}}
{{- $ctx := .ctx -}}
checksum/permd-config: {{ include "permd.configChecksum" $ctx }}
{{- if $ctx.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ include "permd.addrPort" (include "permd.adminAddr" $ctx) | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* {containers, volumes} for a role; the webhook ConfigMap is this as JSON. */}}
{{- define "permd.sidecarFor" -}}
{{- $container := include "permd.container" . | fromYaml -}}
{{- $volumes := include "permd.volumes" . | fromYamlArray -}}
{{- toYaml (dict "containers" (list $container) "volumes" $volumes) -}}
{{- end -}}

{{/* ===== public templates ===== */}}

{{- define "permd.sidecar" -}}
{{- $ctx := dict -}}
{{- include "permd.ctx" (dict "in" . "out" $ctx) -}}
{{- include "permd.sidecarFor" (dict "ctx" $ctx "role" "sidecar") -}}
{{- end -}}

{{- define "permd.sidecar.containers" -}}
{{- toYaml (include "permd.sidecar" . | fromYaml).containers -}}
{{- end -}}

{{- define "permd.sidecar.volumes" -}}
{{- toYaml (include "permd.sidecar" . | fromYaml).volumes -}}
{{- end -}}

{{- define "permd.sidecar.podAnnotations" -}}
{{- $ctx := dict -}}
{{- include "permd.ctx" (dict "in" . "out" $ctx) -}}
{{- include "permd.podAnnotationsFor" (dict "ctx" $ctx "role" "sidecar") -}}
{{- end -}}

{{- define "permd.sidecar.podLabels" -}}
permd.io/sidecar: "true"
{{- end -}}

{{- define "permd.sidecar.appVolumeMounts" -}}
{{- $ctx := dict -}}
{{- include "permd.ctx" (dict "in" . "out" $ctx) -}}
{{- if $ctx.Values.unixSocket.enabled -}}
- name: permd-socket
  mountPath: {{ $ctx.Values.unixSocket.mountPath }}
{{- end -}}
{{- end -}}
