{{/* Names shared by every template. */}}
{{- define "zhisuan.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "zhisuan.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "zhisuan.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "zhisuan.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- define "zhisuan.adminSecretName" -}}
{{- .Values.adminKey.existingSecret | default (printf "%s-admin" (include "zhisuan.fullname" .)) -}}
{{- end -}}

{{/*
"true" when the ValidatingAdmissionPolicies are to be rendered
(admissionPolicies: auto / always / never).
*/}}
{{- define "zhisuan.admissionPolicies" -}}
{{- $mode := .Values.admissionPolicies | toString -}}
{{- if not (has $mode (list "auto" "always" "never")) -}}
{{- fail (printf "admissionPolicies must be auto, always or never, not %q" $mode) -}}
{{- end -}}
{{- if or (eq $mode "always") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy")) -}}
true
{{- end -}}
{{- end -}}

{{/* Refuses values that cannot work, naming the value and the fix. */}}
{{- define "zhisuan.validate" -}}
{{- if not (has .Values.ledger.backend (list "sqlite" "postgres")) -}}
{{- fail (printf "ledger.backend must be sqlite or postgres, not %q" .Values.ledger.backend) -}}
{{- end -}}
{{- if and (eq .Values.ledger.backend "sqlite") (gt (int .Values.api.replicas) 1) -}}
{{- fail "api.replicas > 1 needs ledger.backend=postgres: a SQLite file on a ReadWriteOnce volume has one writer; set ledger.backend=postgres and ledger.postgres.existingSecret, or api.replicas=1" -}}
{{- end -}}
{{- if and (eq .Values.ledger.backend "postgres") (not .Values.ledger.postgres.existingSecret) -}}
{{- fail "ledger.backend=postgres needs ledger.postgres.existingSecret: the name of a Secret holding the PostgreSQL URL under key ledger.postgres.secretKey" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled .Values.networkPolicy.egress.enabled (not .Values.networkPolicy.egress.apiServer) -}}
{{- fail "networkPolicy.egress.enabled needs networkPolicy.egress.apiServer: the Kubernetes API server's addresses as NetworkPolicy peers, e.g. [{ipBlock: {cidr: 10.0.0.10/32}}] (kubectl get endpoints kubernetes)" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled .Values.networkPolicy.egress.enabled (eq .Values.ledger.backend "postgres") (not .Values.networkPolicy.egress.ledger) -}}
{{- fail "networkPolicy.egress.enabled with ledger.backend=postgres needs networkPolicy.egress.ledger: the PostgreSQL server as NetworkPolicy peers, e.g. [{ipBlock: {cidr: 10.0.5.20/32}}]" -}}
{{- end -}}
{{- if not (has .Values.agent.backend (list "nvml" "sim" "npu-exporter")) -}}
{{- fail (printf "agent.backend must be nvml, sim or npu-exporter, not %q" .Values.agent.backend) -}}
{{- end -}}
{{- end -}}

{{/*
The Secret holding the PostgreSQL ledger URL, mounted as the file `url`
(read with --db-file / --ledger-file; never an environment variable).
*/}}
{{- define "zhisuan.ledgerUrlVolume" -}}
- name: ledger-url
  secret:
    secretName: {{ .Values.ledger.postgres.existingSecret }}
    defaultMode: 0400
    items:
      - {key: {{ .Values.ledger.postgres.secretKey }}, path: url}
{{- end }}

{{/*
The egress rules of a component's NetworkPolicy (networkPolicy.egress):
DNS, the API server, the ledger where `ledger` is set, then `to` peers
(any port).
*/}}
{{- define "zhisuan.egress" -}}
{{- $e := .root.Values.networkPolicy.egress -}}
- to:
    {{- toYaml $e.dns | nindent 4 }}
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
- to:
    {{- toYaml $e.apiServer | nindent 4 }}
  ports:
    {{- range $e.apiServerPorts }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- if and .ledger (eq .root.Values.ledger.backend "postgres") $e.ledger }}
- to:
    {{- toYaml $e.ledger | nindent 4 }}
  ports:
    - {port: {{ $e.ledgerPort }}, protocol: TCP}
{{- end }}
{{- with .to }}
- to:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- end -}}
