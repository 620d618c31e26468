//! The CLI's way to a running server: its admin API, with the admin token.

use serde_json::Value;

use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the admin API answered {status}: {message}")]
    Status { status: u16, message: String },
}

pub struct Remote {
    base: String,
    token: Option<Secret>,
    client: reqwest::Client,
}

impl Remote {
    pub fn new(base: &str, token: Option<Secret>) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .timeout(std::time::Duration::from_secs(600))
            .build()
            .unwrap_or_default();
        Remote {
            base: base.trim_end_matches('/').to_string(),
            token,
            client,
        }
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, RemoteError> {
        let req = self.client.get(format!("{}{path}", self.base)).query(query);
        self.send(req).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, RemoteError> {
        let req = self.client.post(format!("{}{path}", self.base)).json(body);
        self.send(req).await
    }

    /// Downloads a binary answer into `out`; returns the bytes written.
    pub async fn download(&self, path: &str, out: &mut (impl std::io::Write + Send)) -> Result<u64, RemoteError> {
        use futures_util::StreamExt;
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        let unreachable = |e: reqwest::Error| RemoteError::Unreachable {
            url: self.base.clone(),
            reason: e.without_url().to_string(),
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let message = resp.text().await.unwrap_or_default();
            return Err(RemoteError::Status { status, message });
        }
        let mut stream = resp.bytes_stream();
        let mut n = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(unreachable)?;
            out.write_all(&chunk).map_err(|e| RemoteError::Status {
                status,
                message: e.to_string(),
            })?;
            n += chunk.len() as u64;
        }
        Ok(n)
    }

    async fn send(&self, mut req: reqwest::RequestBuilder) -> Result<Value, RemoteError> {
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        let resp = req.send().await.map_err(|e| RemoteError::Unreachable {
            url: self.base.clone(),
            reason: e.without_url().to_string(),
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| text.trim().to_string());
            return Err(RemoteError::Status { status, message });
        }
        serde_json::from_str(&text).map_err(|_| RemoteError::Status {
            status,
            message: "the answer is not JSON".into(),
        })
    }
}
