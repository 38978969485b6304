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
