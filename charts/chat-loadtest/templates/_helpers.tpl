{{/*
Object names are the release name plus a fixed suffix (N-server, N-agent, ...), exactly as
`ltops --type kubernetes` names them, so there is no fullnameOverride. 40 characters is ltops's
limit for cluster names, and keeps StatefulSet pod and revision labels under 63.
*/}}
{{- define "chat-loadtest.name" -}}
{{- if gt (len .Release.Name) 40 -}}
{{- fail (printf "release name %q is %d characters long; use at most 40 (the object names, e.g. %s-postgres, must stay valid label values)" .Release.Name (len .Release.Name) .Release.Name) -}}
{{- end -}}
{{- .Release.Name -}}
{{- end -}}

{{/* The ltops.dev/cluster-id label: values.clusterId, or the release name. */}}
{{- define "chat-loadtest.clusterId" -}}
{{- default .Release.Name .Values.clusterId -}}
{{- end -}}

{{/* The product image. */}}
{{- define "chat-loadtest.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Whether the chart runs Grafana (beside its Prometheus only). */}}
{{- define "chat-loadtest.grafana" -}}
{{- if and .Values.prometheus.enabled .Values.grafana.enabled }}true{{ end -}}
{{- end -}}

{{/* Whether the chart runs PostgreSQL itself. */}}
{{- define "chat-loadtest.internalDatabase" -}}
{{- if eq .Values.database.mode "internal" }}true{{ end -}}
{{- end -}}

{{/* Checks across values the schema cannot express; included by every template. */}}
{{- define "chat-loadtest.validate" -}}
{{- if and (eq .Values.database.mode "external") (not .Values.database.external.secretName) -}}
{{- fail "database.mode is external but database.external.secretName is empty: name the existing Secret holding the database URL (and its key with database.external.secretKey, default database-url)" -}}
{{- end -}}
{{- end -}}

{{/*
Labels of every object and pod template. Call with (dict "ctx" $ "component" "server"); an empty
component (the shared Secret and ConfigMap) leaves the component label out.
*/}}
{{- define "chat-loadtest.labels" -}}
app.kubernetes.io/name: chat-loadtest
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/part-of: chat-loadtest
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version }}
ltops.dev/cluster: {{ .ctx.Release.Name }}
ltops.dev/cluster-id: {{ include "chat-loadtest.clusterId" .ctx | quote }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/*
Labels that never change over a release's life, for a StatefulSet's volumeClaimTemplates (which
Kubernetes does not let an upgrade change): no version, no chart. (dict "ctx" $ "component" "postgres")
*/}}
{{- define "chat-loadtest.stableLabels" -}}
app.kubernetes.io/name: chat-loadtest
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/part-of: chat-loadtest
ltops.dev/cluster: {{ .ctx.Release.Name }}
ltops.dev/cluster-id: {{ include "chat-loadtest.clusterId" .ctx | quote }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "agent"). */}}
{{- define "chat-loadtest.selectorLabels" -}}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Metadata of an object: (dict "ctx" $ "name" "N-server" "component" "server"). */}}
{{- define "chat-loadtest.metadata" -}}
metadata:
  name: {{ .name }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "chat-loadtest.labels" . | nindent 4 }}
{{- end -}}

{{/* ceil(a / b) in integers. (list a b) */}}
{{- define "chat-loadtest.ceilDiv" -}}
{{- $a := int (index . 0) -}}{{- $b := int (index . 1) -}}
{{- div (sub (add $a $b) 1) $b -}}
{{- end -}}

{{/*
Requests and limits (twice the requests) from a cpu in millicores and a memory in MiB:
(list cpuMillis memoryMiB).
*/}}
{{- define "chat-loadtest.sizedResources" -}}
{{- $cpu := int (index . 0) -}}{{- $mem := int (index . 1) -}}
requests:
  cpu: {{ printf "%dm" $cpu | quote }}
  memory: {{ printf "%dMi" $mem | quote }}
limits:
  cpu: {{ printf "%dm" (mul $cpu 2) | quote }}
  memory: {{ printf "%dMi" (mul $mem 2) | quote }}
{{- end -}}

{{/* The resources of one component ("server", "agent", "postgres" or "prometheus"): explicit or computed. */}}
{{- define "chat-loadtest.resources" -}}
{{- $v := .ctx.Values -}}
{{- $users := int $v.users -}}
{{- if eq .component "agent" -}}
{{- if $v.agents.resources -}}
{{- toYaml $v.agents.resources -}}
{{- else -}}
{{- $u := int (include "chat-loadtest.ceilDiv" (list $users $v.agents.replicas)) -}}
{{- include "chat-loadtest.sizedResources" (list (add 100 (div $u 10)) (add 64 (div $u 32))) -}}
{{- end -}}
{{- else if eq .component "server" -}}
{{- if $v.server.resources -}}
{{- toYaml $v.server.resources -}}
{{- else -}}
{{- $u := int (include "chat-loadtest.ceilDiv" (list $users $v.server.replicas)) -}}
{{- include "chat-loadtest.sizedResources" (list (add 250 (div $u 10)) (add 128 (div $u 16))) -}}
{{- end -}}
{{- else if eq .component "postgres" -}}
{{- if $v.postgres.resources -}}
{{- toYaml $v.postgres.resources -}}
{{- else -}}
{{- include "chat-loadtest.sizedResources" (list (add 250 (div $users 20)) (add 256 (div $users 64))) -}}
{{- end -}}
{{- else if eq .component "prometheus" -}}
{{- if $v.prometheus.resources -}}
{{- toYaml $v.prometheus.resources -}}
{{- else -}}
{{- $pods := add (int $v.agents.replicas) (int $v.server.replicas) -}}
{{- include "chat-loadtest.sizedResources" (list (add 100 (mul 10 $pods)) (add 256 (mul 16 $pods))) -}}
{{- end -}}
{{- else if eq .component "grafana" -}}
{{- if $v.grafana.resources -}}
{{- toYaml $v.grafana.resources -}}
{{- else -}}
{{- include "chat-loadtest.sizedResources" (list 100 256) -}}
{{- end -}}
{{- else -}}
{{- fail (printf "chat-loadtest.resources: unknown component %q" .component) -}}
{{- end -}}
{{- end -}}

{{/* securityContext of every container. */}}
{{- define "chat-loadtest.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Pod securityContext for a uid/gid: (int uid). */}}
{{- define "chat-loadtest.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
An existing value of the release's Secret (base64, as stored), or "" (also offline, where lookup
finds nothing): random credentials then survive `helm upgrade`. (list $ "key")
*/}}
{{- define "chat-loadtest.existingSecretValue" -}}
{{- $ctx := index . 0 -}}
{{- $secret := lookup "v1" "Secret" $ctx.Release.Namespace (printf "%s-secrets" (include "chat-loadtest.name" $ctx)) -}}
{{- if $secret -}}
{{- index ($secret.data | default dict) (index . 1) | default "" -}}
{{- end -}}
{{- end -}}
