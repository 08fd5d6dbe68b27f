//! `[[delivery]]`: the shop's endpoints that receive signed events, and
//! `reconcile.order_key`. Each secret comes from, in order: the environment
//! (`KONBINI_RECONCILER_DELIVERY_SECRET_<NAME>`, the name upper-cased with `-` as `_`),
//! `secret`, or `secret_file`. A secret may be a list (a rotation: every one signs).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::types::Env;
use super::validate as check;
use crate::delivery::sign::SigningKey;
use crate::ledger::EVENT_TYPES;

type Invalid = (String, String);

/// Ceiling of `delivery.timeout`.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Ceiling of `delivery.concurrency`.
const MAX_CONCURRENCY: i64 = 64;

/// One string or several.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(secrecy::SecretString),
    Many(Vec<secrecy::SecretString>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDelivery {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) secret: Option<OneOrMany>,
    pub(crate) secret_file: Option<String>,
    pub(crate) events: Option<Vec<String>>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub(crate) timeout: Duration,
    #[serde(default = "default_concurrency")]
    pub(crate) concurrency: i64,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_concurrency() -> i64 {
    8
}

/// One endpoint. `Debug` never shows the keys.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub(crate) name: String,
    pub(crate) url: Url,
    /// Signing keys; the first is the current one.
    pub(crate) keys: Vec<SigningKey>,
    /// Event types sent to it.
    pub(crate) events: Vec<String>,
    pub(crate) timeout: Duration,
    /// Deliveries in flight at once (different charges).
    pub(crate) concurrency: usize,
}

/// The environment variable that holds the secret of endpoint `name`.
pub(crate) fn secret_env(name: &str) -> String {
    format!(
        "KONBINI_RECONCILER_DELIVERY_SECRET_{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

/// `reconcile.order_key`: a metadata key, non-empty and short.
pub(super) fn order_key(key: String) -> Result<String, Invalid> {
    if key.is_empty() || key.len() > 255 || key.chars().any(char::is_control) {
        return Err((
            "reconcile.order_key".into(),
            "must be a metadata key of 1 to 255 characters".into(),
        ));
    }
    Ok(key)
}

pub(super) fn endpoints(
    files: Vec<FileDelivery>,
    config_path: &Path,
    env: &dyn Env,
) -> Result<Vec<DeliverySettings>, Invalid> {
    let mut out: Vec<DeliverySettings> = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        let e = endpoint(f, i, config_path, env)?;
        if out.iter().any(|o| o.name == e.name) {
            return Err((
                format!("delivery[{i}].name"),
                format!(
                    "{:?} is used by another [[delivery]]; names must be unique",
                    e.name
                ),
            ));
        }
        out.push(e);
    }
    Ok(out)
}

fn endpoint(
    f: FileDelivery,
    i: usize,
    config_path: &Path,
    env: &dyn Env,
) -> Result<DeliverySettings, Invalid> {
    let key = |k: &str| format!("delivery[{i}].{k}");
    let name_ok = !f.name.is_empty()
        && f.name.len() <= 64
        && f.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        return Err((
            key("name"),
            "must be 1 to 64 letters, digits, - or _".into(),
        ));
    }
    let url = check::parse_base_url(&f.url).map_err(|m| (key("url"), m))?;
    let keys = keys(&f, &key, config_path, env)?;
    let events = match f.events {
        None => EVENT_TYPES.iter().map(|s| (*s).to_owned()).collect(),
        Some(list) => {
            if list.is_empty() {
                return Err((
                    key("events"),
                    "is empty; leave it out to send every event type".into(),
                ));
            }
            for t in &list {
                if !EVENT_TYPES.contains(&t.as_str()) {
                    return Err((
                        key("events"),
                        format!(
                            "unknown event type {t:?}; known: {}",
                            EVENT_TYPES.join(", ")
                        ),
                    ));
                }
            }
            list
        }
    };
    check::positive(f.timeout)
        .and_then(|()| check::at_most(f.timeout, MAX_TIMEOUT))
        .map_err(|m| (key("timeout"), m))?;
    check::in_range(f.concurrency, 1, MAX_CONCURRENCY).map_err(|m| (key("concurrency"), m))?;
    Ok(DeliverySettings {
        name: f.name,
        url,
        keys,
        events,
        timeout: f.timeout,
        concurrency: f.concurrency as usize,
    })
}

fn keys(
    f: &FileDelivery,
    key: &dyn Fn(&str) -> String,
    config_path: &Path,
    env: &dyn Env,
) -> Result<Vec<SigningKey>, Invalid> {
    use secrecy::ExposeSecret;
    let var = secret_env(&f.name);
    let (texts, at): (Vec<String>, String) = match (env.var(&var), &f.secret, &f.secret_file) {
        (Some(v), _, _) => (
            v.split_whitespace().map(str::to_owned).collect(),
            format!("${var}"),
        ),
        (None, Some(_), Some(_)) => {
            return Err((
                key("secret_file"),
                "set either secret or secret_file, not both".into(),
            ));
        }
        (None, Some(OneOrMany::One(s)), None) => {
            (vec![s.expose_secret().to_owned()], key("secret"))
        }
        (None, Some(OneOrMany::Many(v)), None) => (
            v.iter().map(|s| s.expose_secret().to_owned()).collect(),
            key("secret"),
        ),
        (None, None, Some(file)) => {
            let text = check::read_secret_file(file, config_path, env)
                .map_err(|m| (key("secret_file"), m))?;
            (
                text.split_whitespace().map(str::to_owned).collect(),
                key("secret_file"),
            )
        }
        (None, None, None) => {
            return Err((
                key("secret"),
                format!(
                    "missing: each endpoint needs a Standard Webhooks secret (whsec_...), or secret_file, or ${var}"
                ),
            ));
        }
    };
    if texts.is_empty() {
        return Err((at, "is empty".into()));
    }
    texts
        .iter()
        .map(|t| SigningKey::parse(t).map_err(|m| (at.clone(), m)))
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;
    use std::path::Path;

    const BASE: &str = "[api]\napp_token = \"t\"\nsecret = \"s\"\n";
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn load(extra: &str, env: &[(&str, &str); 1]) -> Result<Settings, String> {
        Settings::from_toml(&format!("{BASE}{extra}"), Path::new("c.toml"), env)
            .map_err(|e| e.to_string())
    }

    const NOENV: [(&str, &str); 1] = [("X", "y")];

    #[test]
    fn an_endpoint_with_defaults() {
        let s = load(
            &format!("[[delivery]]\nname = \"shop\"\nurl = \"https://shop.example/h\"\nsecret = \"{SECRET}\"\n"),
            &NOENV,
        )
        .unwrap();
        let d = &s.delivery[0];
        assert_eq!(d.events.len(), 5);
        assert_eq!(d.timeout, std::time::Duration::from_secs(10));
        assert_eq!(d.keys.len(), 1);
        assert!(!format!("{s:?}").contains("MfKQ9r8"));
    }

    #[test]
    fn mistakes_name_the_key_and_never_the_secret() {
        for (extra, key) in [
            (
                "name = \"shop\"\nurl = \"http://shop.example/h\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
                "delivery[0].url",
            ),
            (
                "name = \"shop\"\nurl = \"https://shop.example/h\"\n",
                "delivery[0].secret",
            ),
            (
                "name = \"shop\"\nurl = \"https://shop.example/h\"\nsecret = \"whsec_!!notbase64MfKQ9r8\"\n",
                "delivery[0].secret",
            ),
            (
                "name = \"shop\"\nurl = \"https://shop.example/h\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nevents = [\"charge.payd\"]\n",
                "delivery[0].events",
            ),
            (
                "name = \"a b\"\nurl = \"https://shop.example/h\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
                "delivery[0].name",
            ),
        ] {
            let e = load(&format!("[[delivery]]\n{extra}"), &NOENV).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
            assert!(!e.contains("MfKQ9r8"), "{e}");
        }
        let one = format!(
            "[[delivery]]\nname = \"shop\"\nurl = \"https://shop.example/h\"\nsecret = \"{SECRET}\"\n"
        );
        let e = load(&format!("{one}{one}"), &NOENV).unwrap_err();
        assert!(
            e.contains("delivery[1].name") && e.contains("unique"),
            "{e}"
        );
    }

    #[test]
    fn the_environment_wins_and_rotation_takes_several() {
        let env = [(
            "KONBINI_RECONCILER_DELIVERY_SECRET_MY_SHOP",
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )];
        let s = load(
            "[[delivery]]\nname = \"my-shop\"\nurl = \"http://127.0.0.1:9/h\"\n",
            &env,
        )
        .unwrap();
        assert_eq!(s.delivery[0].keys.len(), 2);
        let s = load(
            &format!("[[delivery]]\nname = \"s\"\nurl = \"http://127.0.0.1:9/h\"\nsecret = [\"{SECRET}\", \"{SECRET}\"]\n"),
            &NOENV,
        )
        .unwrap();
        assert_eq!(s.delivery[0].keys.len(), 2);
    }
}
