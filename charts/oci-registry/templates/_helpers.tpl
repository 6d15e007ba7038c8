{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "oci-registry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name for every object this chart makes. */}}
{{- define "oci-registry.fullname" -}}
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

{{- define "oci-registry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "oci-registry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "oci-registry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "oci-registry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "oci-registry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "oci-registry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding UPSTREAM_CREDENTIALS, or "" when there is none. */}}
{{- define "oci-registry.credentialsSecret" -}}
{{- if .Values.credentials.existingSecret }}
{{- .Values.credentials.existingSecret }}
{{- else if .Values.credentials.registries }}
{{- printf "%s-credentials" (include "oci-registry.fullname" .) }}
{{- end }}
{{- end }}

{{/* Where the upstream file is mounted. */}}
{{- define "oci-registry.upstreamsFile" -}}
/etc/oci-registry/upstreams.yaml
{{- end }}

{{/* Name of the Secret holding the auth config, or "" when auth is off. */}}
{{- define "oci-registry.authSecret" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else if .Values.auth.htpasswd }}
{{- printf "%s-auth" (include "oci-registry.fullname" .) }}
{{- end }}
{{- end }}

{{/* Where the auth Secret is mounted (its own directory: the config names files beside it). */}}
{{- define "oci-registry.authDir" -}}
/etc/oci-registry-auth
{{- end }}

{{/*
A value as one command-line argument: values files turn numbers into floats, which would print
as 1e+06; whole numbers are printed as integers.
*/}}
{{- define "oci-registry.flagValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) }}
{{- int64 . }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/* The program's --shutdown-grace when shutdown.graceSeconds is empty (src/config/cli.ts). */}}
{{- define "oci-registry.defaultShutdownGraceSeconds" -}}
25
{{- end }}

{{/* --shutdown-grace's value ("40s"), or "" to leave the program's default. */}}
{{- define "oci-registry.shutdownGraceFlag" -}}
{{- $grace := toString .Values.shutdown.graceSeconds }}
{{- if ne $grace "" }}
{{- printf "%ss" $grace }}
{{- end }}
{{- end }}

{{/* The grace in seconds the program will use. */}}
{{- define "oci-registry.shutdownGraceSeconds" -}}
{{- $grace := toString .Values.shutdown.graceSeconds }}
{{- if eq $grace "" }}
{{- include "oci-registry.defaultShutdownGraceSeconds" . }}
{{- else }}
{{- $grace }}
{{- end }}
{{- end }}

{{/* The pod's terminationGracePeriodSeconds: as given, or the grace plus 5. */}}
{{- define "oci-registry.terminationGracePeriodSeconds" -}}
{{- $given := toString .Values.shutdown.terminationGracePeriodSeconds }}
{{- if ne $given "" }}
{{- $given }}
{{- else }}
{{- add (atoi (include "oci-registry.shutdownGraceSeconds" .)) 5 }}
{{- end }}
{{- end }}

{{/*
Refuses values that cannot work, with a message saying what to change. Included by the
Deployment, so `helm install/template` stops before anything is applied.
*/}}
{{- define "oci-registry.validate" -}}
{{- $type := .Values.storage.type }}
{{- if not (has $type (list "filesystem" "s3")) }}
{{- fail (printf "storage.type must be \"filesystem\" or \"s3\", got %q" $type) }}
{{- end }}
{{- if and (eq $type "filesystem") (gt (int .Values.replicaCount) 1) }}
{{- fail (printf "storage.type=filesystem keeps the cache on one pod's volume, so replicaCount must be 1 (got %d); use storage.type=s3 to run several replicas over one bucket" (int .Values.replicaCount)) }}
{{- end }}
{{- if and (eq $type "s3") (not .Values.storage.s3.bucket) }}
{{- fail "storage.type=s3 needs storage.s3.bucket" }}
{{- end }}
{{- if .Values.ingress.enabled }}
{{- if not .Values.ingress.hosts }}
{{- fail "ingress.enabled needs at least one entry in ingress.hosts" }}
{{- end }}
{{- range $i, $h := .Values.ingress.hosts }}
{{- if or (not (kindIs "map" $h)) (not $h.host) (not $h.paths) }}
{{- fail (printf "ingress.hosts[%d] needs host and paths" $i) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.hosted.allowAnonymousPush (include "oci-registry.authSecret" .) }}
{{- fail "hosted.allowAnonymousPush and auth exclude each other: with auth, grant anonymous pushes in a rule (anonymous: true, actions: [push])" }}
{{- end }}
{{- if and (not .Values.auth.htpasswd) (not .Values.auth.existingSecret) (or .Values.auth.config .Values.auth.tokenKey) }}
{{- fail "auth.config and auth.tokenKey need auth.htpasswd (the users), or auth.existingSecret" }}
{{- end }}
{{- if and .Values.auth.existingSecret (or .Values.auth.htpasswd .Values.auth.config .Values.auth.tokenKey) }}
{{- fail "auth.existingSecret holds the whole auth config: leave auth.htpasswd, auth.config and auth.tokenKey empty" }}
{{- end }}
{{- if hasKey .Values.auth.config "htpasswd" }}
{{- fail "auth.config.htpasswd: put the users file's content in auth.htpasswd (the chart writes the path)" }}
{{- end }}
{{- if and .Values.auth.tokenKey (lt (len .Values.auth.tokenKey) 32) }}
{{- fail (printf "auth.tokenKey needs at least 32 bytes (got %d)" (len .Values.auth.tokenKey)) }}
{{- end }}
{{- if and .Values.auth.tokenKey (hasKey (get .Values.auth.config "token" | default dict) "secret_file") }}
{{- fail "auth.config.token.secret_file: give the key in auth.tokenKey (the chart writes the path)" }}
{{- end }}
{{- if not (kindIs "slice" .Values.hosted.namespaces) }}
{{- fail "hosted.namespaces must be a list such as [myorg, internal]" }}
{{- end }}
{{- range $i, $name := .Values.hosted.namespaces }}
{{- if not (regexMatch "^[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*$" (toString $name)) }}
{{- fail (printf "hosted.namespaces[%d]: %q is not a repository name component (lower case, e.g. myorg)" $i (toString $name)) }}
{{- end }}
{{- if eq (toString $name) $.Values.defaultNamespace }}
{{- fail (printf "hosted.namespaces[%d]: %q is the default namespace, which is mirrored" $i (toString $name)) }}
{{- end }}
{{- range $.Values.upstreams }}
{{- if and (kindIs "map" .) (eq (toString .namespace) (toString $name)) }}
{{- fail (printf "hosted.namespaces[%d]: %q is also in upstreams; hosted names are never mirrored, so choose one" $i (toString $name)) }}
{{- end }}
{{- end }}
{{- end }}
{{- if not (has (toString .Values.upstreamPolicy) (list "" "any" "configured")) }}
{{- fail (printf "upstreamPolicy must be \"any\" or \"configured\" (or empty for the program's any), got %q" (toString .Values.upstreamPolicy)) }}
{{- end }}
{{- range $key := list "graceSeconds" "terminationGracePeriodSeconds" }}
{{- $value := toString (index $.Values.shutdown $key) }}
{{- if and (ne $value "") (not (regexMatch "^[0-9]+$" $value)) }}
{{- fail (printf "shutdown.%s must be a whole number of seconds, got %q" $key $value) }}
{{- end }}
{{- end }}
{{- if ne (toString .Values.shutdown.terminationGracePeriodSeconds) "" }}
{{- $grace := atoi (include "oci-registry.shutdownGraceSeconds" .) }}
{{- if le (atoi (toString .Values.shutdown.terminationGracePeriodSeconds)) $grace }}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%s) must be more than the shutdown grace (%d s), or the kubelet kills the pod while it still finishes requests" (toString .Values.shutdown.terminationGracePeriodSeconds) $grace) }}
{{- end }}
{{- end }}
{{- if and (eq $type "s3") (hasSuffix "%" (toString .Values.cache.maxSize)) }}
{{- fail "cache.maxSize: a percentage needs storage.type=filesystem; give a size such as 50GiB" }}
{{- end }}
{{- $known := list "namespace" "host" "hosts" "tls" "accept_invalid_certs" "user_agent" "manifest_invalidation_time" "blob_invalidation_time" "rate_limit_reserve" "forward_ns" "failover_backoff" "max_concurrent_requests" "max_requests_per_second" "queue_timeout" "repositories" "exclude_repositories" "tags" "exclude_tags" "refusal_status" "warm" "warm_interval" "auth" "passthrough_ttl" }}
{{- range $i, $upstream := .Values.upstreams }}
{{- if not (kindIs "map" $upstream) }}
{{- fail (printf "upstreams[%d] must be a mapping with at least namespace and host" $i) }}
{{- end }}
{{- if or (not $upstream.namespace) (and (not $upstream.host) (not $upstream.hosts)) }}
{{- fail (printf "upstreams[%d] needs a namespace and a host (or hosts)" $i) }}
{{- end }}
{{- range $j, $endpoint := $upstream.hosts }}
{{- if and (kindIs "map" $endpoint) (or (hasKey $endpoint "username") (hasKey $endpoint "password")) }}
{{- fail (printf "upstreams[%d].hosts[%d]: endpoint credentials cannot go in a ConfigMap; use credentials.registries for the namespace" $i $j) }}
{{- end }}
{{- end }}
{{- range $key, $_ := $upstream }}
{{- if has $key (list "username" "password") }}
{{- fail (printf "upstreams[%d] (%s): put %s under credentials.registries (a Secret), not in upstreams (a ConfigMap)" $i $upstream.namespace $key) }}
{{- end }}
{{- if not (has $key $known) }}
{{- fail (printf "upstreams[%d] (%s): unknown key %q (known: %s)" $i $upstream.namespace $key (join ", " $known)) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $namespace, $entry := .Values.credentials.registries }}
{{- if or (not (kindIs "map" $entry)) (not $entry.username) (not $entry.password) }}
{{- fail (printf "credentials.registries.%s needs username and password" $namespace) }}
{{- end }}
{{- end }}
{{- end }}
