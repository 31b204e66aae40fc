{{/*
Names are fixed, not prefixed with the release: the proxies, the injector's
config and SPIFFE IDs depend on them (trellis-identity is also the identity
service's ServiceAccount, hence its SPIFFE ID). One Trellis per cluster.
*/}}

{{/* Labels every object carries. */}}
{{- define "trellis.labels" -}}
app.kubernetes.io/name: trellis
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: trellis
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels of one component's objects: dict "root" $ "component" "identity" */}}
{{- define "trellis.componentLabels" -}}
{{ include "trellis.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector labels of one component's pods (stable across upgrades). */}}
{{- define "trellis.selectorLabels" -}}
app.kubernetes.io/name: trellis
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference: dict "root" $ "image" .Values.x.image */}}
{{- define "trellis.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if hasPrefix "sha256:" $tag -}}
{{- printf "%s/%s@%s" .root.Values.image.registry .image.repository $tag -}}
{{- else -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The version recorded in injected pods (trellis.dev/proxy-version). */}}
{{- define "trellis.proxyVersion" -}}
{{- .Values.proxy.image.tag | default .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{/* NAME.NS.svc.CLUSTER_DOMAIN of one of the chart's Services. */}}
{{- define "trellis.serviceHost" -}}
{{- printf "%s.%s.svc.%s" .name .root.Release.Namespace .root.Values.clusterDomain -}}
{{- end -}}

{{/*
Pod-level security context: non-root, RuntimeDefault seccomp. fsGroup makes
mounted Secrets (mode 0440) readable by the containers' group.
*/}}
{{- define "trellis.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security context. */}}
{{- define "trellis.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod annotations: scrape annotations and the component's own. dict "root" $ "c" .Values.x "adminPort" 7195 */}}
{{- define "trellis.podAnnotations" -}}
{{- if .root.Values.monitoring.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .adminPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- range $k, $v := .c.podAnnotations }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{- end -}}

{{/* Affinity of one component's pods: dict "root" $ "component" "identity" */}}
{{- define "trellis.affinity" -}}
{{- $mode := .root.Values.podAntiAffinity.mode -}}
{{- if eq $mode "preferred" }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: {{ .root.Values.podAntiAffinity.topologyKey }}
          labelSelector:
            matchLabels:
              {{- include "trellis.selectorLabels" . | nindent 14 }}
{{- else if eq $mode "required" }}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: {{ .root.Values.podAntiAffinity.topologyKey }}
        labelSelector:
          matchLabels:
            {{- include "trellis.selectorLabels" . | nindent 12 }}
{{- end }}
{{- end -}}

{{/* Scheduling and pull settings shared by the Deployments: dict "root" $ "c" .Values.x */}}
{{- define "trellis.podScheduling" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with .c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* Readiness and liveness probes on the admin port (named "admin"). */}}
{{- define "trellis.probes" -}}
readinessProbe:
  httpGet:
    path: /ready
    port: admin
  periodSeconds: 5
  failureThreshold: 3
  timeoutSeconds: 2
livenessProbe:
  httpGet:
    path: /live
    port: admin
  initialDelaySeconds: 10
  periodSeconds: 10
  failureThreshold: 3
  timeoutSeconds: 2
{{- end -}}

{{/*
Checks that concern several values at once; the schema checks each alone.
Called from every Deployment so that a bad combination stops rendering.
*/}}
{{- define "trellis.validate" -}}
{{- $v := .Values -}}
{{- if and $v.proxy.nativeSidecar (semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version) -}}
{{- fail (printf "proxy.nativeSidecar=true needs Kubernetes 1.29 or later (native sidecars); this cluster is %s: set proxy.nativeSidecar=false" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- if and $v.cni.enabled (not $v.proxy.nativeSidecar) -}}
{{- fail "cni.enabled=true needs proxy.nativeSidecar=true: the CNI plugin installs a pod's capture rules before any of its containers starts, so with the proxy as a plain container the pod's own init containers would run with their connections redirected to a proxy not started yet" -}}
{{- end -}}
{{- $mode := $v.identity.issuer.mode -}}
{{- if eq $mode "provided" -}}
{{- $missing := list -}}
{{- if not $v.identity.trustRootsPEM }}{{ $missing = append $missing "identity.trustRootsPEM" }}{{ end -}}
{{- if not $v.identity.issuer.certPEM }}{{ $missing = append $missing "identity.issuer.certPEM" }}{{ end -}}
{{- if not $v.identity.issuer.keyPEM }}{{ $missing = append $missing "identity.issuer.keyPEM" }}{{ end -}}
{{- if $missing -}}
{{- fail (printf "identity.issuer.mode=provided needs %s (PEM; e.g. --set-file identity.trustRootsPEM=roots.pem --set-file identity.issuer.certPEM=issuer.crt --set-file identity.issuer.keyPEM=issuer.key)" (join ", " $missing)) -}}
{{- end -}}
{{- else if eq $mode "certManager" -}}
{{- if not $v.identity.trustRootsPEM -}}
{{- fail "identity.issuer.mode=certManager needs identity.trustRootsPEM: the PEM of the root(s) that the cert-manager issuer chains to (e.g. --set-file identity.trustRootsPEM=roots.pem)" -}}
{{- end -}}
{{- if not $v.identity.issuer.certManager.issuerRef.name -}}
{{- fail "identity.issuer.mode=certManager needs identity.issuer.certManager.issuerRef.name: the cert-manager (Cluster)Issuer that signs the identity issuer" -}}
{{- end -}}
{{- end -}}
{{- end -}}
