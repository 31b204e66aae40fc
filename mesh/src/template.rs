//! Placeholders in a workload's `command`: `{trellis}`, `{name}`,
//! `{workload}`, `{namespace}`, `{ip}` and `{port}`. Validation expands
//! every argument with sample values; the plan with each replica's own.
//! Pure.

/// What placeholders in a workload's `command` stand for.
#[derive(Debug, Clone)]
pub(crate) struct TemplateVars {
    pub trellis: String,
    pub name: String,
    pub workload: String,
    pub namespace: String,
    pub ip: String,
    pub port: Option<u16>,
}

impl TemplateVars {
    /// Values of the right shape, for validating templates.
    pub(crate) fn sample(has_port: bool) -> Self {
        Self {
            trellis: "/bin/trellis".into(),
            name: "w-0".into(),
            workload: "w".into(),
            namespace: "ns".into(),
            ip: "10.0.0.2".into(),
            port: has_port.then_some(1),
        }
    }

    fn get(&self, key: &str) -> Result<String, String> {
        match key {
            "trellis" => Ok(self.trellis.clone()),
            "name" => Ok(self.name.clone()),
            "workload" => Ok(self.workload.clone()),
            "namespace" => Ok(self.namespace.clone()),
            "ip" => Ok(self.ip.clone()),
            "port" => self
                .port
                .map(|p| p.to_string())
                .ok_or_else(|| "{port} means the workload's first port, but it lists no `ports`".to_string()),
            other => Err(format!(
                "unknown placeholder {{{other}}}; known: {{trellis}} (the trellis binary), {{name}} (replica, web-0), {{workload}}, {{namespace}}, {{ip}}, {{port}} (first port); write {{{{ and }}}} for literal braces"
            )),
        }
    }
}

/// Replaces `{trellis}`, `{name}`, `{workload}`, `{namespace}`, `{ip}` and
/// `{port}` in `template`; `{{` and `}}` are literal braces.
pub(crate) fn expand(template: &str, vars: &TemplateVars) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{{") {
            out.push('{');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("}}") {
            out.push('}');
            rest = t;
        } else if tail.starts_with('}') {
            return Err(format!(
                "unmatched '}}' in {template:?} (write }}}} for a literal brace)"
            ));
        } else {
            let end = tail.find('}').ok_or_else(|| {
                format!("unclosed '{{' in {template:?} (write {{{{ for a literal brace)")
            })?;
            out.push_str(&vars.get(&tail[1..end])?);
            rest = &tail[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}
