{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name, shortened to a DNS label. */}}
{{- define "ordo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of every resource: `<release>-ordo`, or just the release name when it already
contains the chart name. 52 characters leave room for suffixes such as `-tls` and `-ca`.
*/}}
{{- define "ordo.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ordo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "ordo.labels" -}}
helm.sh/chart: {{ include "ordo.chart" . }}
{{ include "ordo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ordo
{{- end }}

{{/* Labels that select the operator pods; never change them (Deployment selectors are immutable). */}}
{{- define "ordo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ordo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "ordo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ordo.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the serving certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "ordo.tlsSecretName" -}}
{{- printf "%s-tls" (include "ordo.fullname" .) }}
{{- end }}

{{- define "ordo.leaseName" -}}
{{- default (include "ordo.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* The Service of the report endpoint: no selector, the leader writes its only endpoint. */}}
{{- define "ordo.reportServiceName" -}}
{{- printf "%s-reports" (include "ordo.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* DNS names the serving certificate must cover: how the API server calls the webhook Service
and how enforcers call the report Service. */}}
{{- define "ordo.serviceDnsNames" -}}
{{- $svc := include "ordo.fullname" . -}}
{{- $reports := include "ordo.reportServiceName" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) (printf "%s.%s.svc" $reports $ns) (printf "%s.%s.svc.%s" $reports $ns .Values.clusterDomain) | toJson }}
{{- end }}

{{/* `repository:tag` or `repository@digest`; the tag defaults to the chart's appVersion. */}}
{{- define "ordo.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .appVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "ordo.operatorImage" -}}
{{- include "ordo.image" (dict "image" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{- define "ordo.enforcerImage" -}}
{{- include "ordo.image" (dict "image" .Values.enforcer.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/* The URL enforcers POST their reports to: the report Service, whose only endpoint is the
leader (verified against ca.crt). */}}
{{- define "ordo.reportUrl" -}}
{{- printf "https://%s.%s.svc:%d" (include "ordo.reportServiceName" .) .Release.Namespace (int .Values.service.httpsPort) }}
{{- end }}

{{/* `namespace/name` of the cert-manager Certificate whose CA cert-manager injects into the webhook. */}}
{{- define "ordo.certManagerCertificate" -}}
{{- printf "%s/%s-serving" .Release.Namespace (include "ordo.fullname" .) }}
{{- end }}
