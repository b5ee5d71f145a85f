//! Asking WeChat Pay (API v3): the transaction by our order number, and closing it. Requests
//! carry the merchant's `Authorization` signature; WeChat Pay signs its answers exactly like its
//! notifications, and they are verified the same way, a signed 404 included.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};

use super::answer::{said, send, Answer, AskError, Closing, Queried};
use crate::books::orders::Order;
use crate::config::WechatPayConfig;
use crate::domain::clock::Clock;
use crate::domain::ids::ChannelName;
use crate::domain::notification::NotificationKind;
use crate::notify::sign::{unique_hex, RsaSigner};
use crate::notify::wechatpay::WechatPay;
use crate::notify::{shown, Provider, RawRequest};

/// The only scheme API v3 takes requests signed with.
const SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// A WeChat Pay channel's merchant, with its API certificate's private key.
pub struct WechatPayAsker {
    channel: ChannelName,
    adapter: WechatPay,
    mchid: String,
    serial_no: String,
    key: RsaSigner,
    api_base: String,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
}

impl WechatPayAsker {
    pub(super) fn new(
        channel: &ChannelName,
        cfg: &WechatPayConfig,
        http: reqwest::Client,
        clock: Arc<dyn Clock>,
    ) -> Result<Option<WechatPayAsker>, String> {
        let (Some(key), Some(serial_no)) = (&cfg.merchant_private_key, &cfg.merchant_serial_no)
        else {
            return Ok(None);
        };
        let key =
            RsaSigner::from_text(key.expose()).map_err(|e| format!("merchant_private_key: {e}"))?;
        Ok(Some(WechatPayAsker {
            channel: channel.clone(),
            adapter: WechatPay::new(cfg)?,
            mchid: cfg.mchid.clone(),
            serial_no: serial_no.clone(),
            key,
            api_base: cfg.api_base.trim_end_matches('/').to_owned(),
            http,
            clock,
        }))
    }

    pub(super) fn with_clock(self, clock: Arc<dyn Clock>) -> WechatPayAsker {
        WechatPayAsker { clock, ..self }
    }

    /// `GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid=...`: the transaction, or a
    /// signed 404 `ORDER_NOT_EXIST` while the buyer has not started paying.
    pub(super) async fn query(&self, order: &Order) -> Result<Queried, AskError> {
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{}?mchid={}",
            order.order_no, self.mchid
        );
        let answer = self.call("GET", &path, None).await?;
        match (answer.status, code(&answer).as_deref()) {
            (200, _) => {
                let notification = self
                    .adapter
                    .transaction_notification(&self.channel, &answer.body);
                if let Ok(n) = &notification {
                    let waiting = matches!(&n.kind, NotificationKind::Other(state)
                        if state == "NOTPAY" || state == "USERPAYING");
                    if waiting && n.order_no.as_ref() == Some(&order.order_no) {
                        return Ok(Queried::NotPaid);
                    }
                }
                said(&answer, self.signed(), order, notification)
            }
            (404, Some("ORDER_NOT_EXIST")) => Ok(Queried::NotPaid),
            (status, code) => Err(self.refused(&answer, "query", status, code)),
        }
    }

    /// `POST .../out-trade-no/{out_trade_no}/close` with `{"mchid"}`, answered 204.
    pub(super) async fn close(&self, order: &Order) -> Result<Closing, AskError> {
        let path = format!("/v3/pay/transactions/out-trade-no/{}/close", order.order_no);
        let body = serde_json::json!({ "mchid": self.mchid }).to_string();
        let answer = self.call("POST", &path, Some(body)).await?;
        match (answer.status, code(&answer).as_deref()) {
            (200 | 204, _) => Ok(Closing::Closed),
            (_, Some("ORDER_CLOSED")) | (404, Some("ORDER_NOT_EXIST")) => Ok(Closing::Closed),
            (_, Some("ORDERPAID" | "ORDER_PAID" | "TRADE_PAID")) => Ok(Closing::AlreadyPaid),
            (_, Some("USER_PAYING" | "USERPAYING")) => Err(AskError::Unreachable(
                "WeChat Pay close: the buyer is paying right now; ask again".to_owned(),
            )),
            (status, code) => Err(self.refused(&answer, "close", status, code)),
        }
    }

    /// Sends a signed request for `path_and_query` under the API base and verifies the answer.
    async fn call(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<String>,
    ) -> Result<Answer, AskError> {
        let url = url::Url::parse(&format!("{}{path_and_query}", self.api_base))
            .map_err(|_| AskError::Unreachable("api_base does not make a URL".to_owned()))?;
        // What is signed is the path and query exactly as the request line carries them.
        let signed_path = &url[url::Position::BeforePath..url::Position::AfterQuery];
        let body_text = body.clone().unwrap_or_default();
        let authorization = self.authorization(method, signed_path, &body_text);
        let what = format!("WeChat Pay {method} {}", url.path());
        let mut request = match method {
            "POST" => self.http.post(url.clone()),
            _ => self.http.get(url.clone()),
        }
        .header(AUTHORIZATION, authorization)
        .header(ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let answer = send(request, &what).await?;
        let raw = RawRequest {
            headers: &answer.headers,
            body: &answer.body,
        };
        if let Err(rejection) = self.adapter.check_answer(&raw, self.clock.now()) {
            let reason = if answer.status == 401 {
                format!(
                    "{what}: WeChat Pay refused our signature (401 {}): check merchant_private_key \
                     and merchant_serial_no",
                    code(&answer).map_or("unsigned".to_owned(), |c| shown(&c))
                )
            } else {
                format!("{what}: {rejection}")
            };
            return Err(answer.invalid(self.signed(), reason));
        }
        Ok(answer)
    }

    /// The `Authorization` header for a request signed now with a fresh nonce.
    fn authorization(&self, method: &str, path_and_query: &str, body: &str) -> String {
        let timestamp = self.clock.now().timestamp().to_string();
        let nonce = unique_hex().to_uppercase();
        let message = request_message(method, path_and_query, &timestamp, &nonce, body);
        let signature = STANDARD.encode(self.key.sign_sha256(&message));
        authorization(&self.mchid, &nonce, &signature, &timestamp, &self.serial_no)
    }

    /// The headers WeChat Pay signs its answers in, kept as evidence.
    fn signed(&self) -> &'static [&'static str] {
        self.adapter.signed_headers()
    }

    fn refused(&self, answer: &Answer, what: &str, status: u16, code: Option<&str>) -> AskError {
        let code = code.map_or("no code".to_owned(), shown);
        answer.invalid(
            self.signed(),
            format!("WeChat Pay {what} answered {status} {code}"),
        )
    }
}

/// What the merchant signs: `METHOD\nPATH_WITH_QUERY\nTIMESTAMP\nNONCE\nBODY\n`, the body empty
/// for a GET.
pub fn request_message(
    method: &str,
    path_and_query: &str,
    timestamp: &str,
    nonce: &str,
    body: &str,
) -> Vec<u8> {
    format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{body}\n").into_bytes()
}

/// `Authorization: WECHATPAY2-SHA256-RSA2048 mchid="...",nonce_str="...",signature="...",
/// timestamp="...",serial_no="..."`.
pub fn authorization(
    mchid: &str,
    nonce: &str,
    signature: &str,
    timestamp: &str,
    serial_no: &str,
) -> String {
    format!(
        "{SCHEME} mchid=\"{mchid}\",nonce_str=\"{nonce}\",signature=\"{signature}\",\
         timestamp=\"{timestamp}\",serial_no=\"{serial_no}\""
    )
}

/// The `code` of an error answer (`{"code": "ORDER_NOT_EXIST", "message": "..."}`).
fn code(answer: &Answer) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Error {
        code: String,
    }
    serde_json::from_slice::<Error>(&answer.body)
        .ok()
        .map(|e| e.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_message_is_the_five_lines_wechat_pay_documents() {
        // The example of WeChat Pay's v3 signature guide (签名生成): GET /v3/certificates.
        let message = request_message(
            "GET",
            "/v3/certificates",
            "1554208460",
            "593BEC0C930BF1AFEB40B4A08C8FB242",
            "",
        );
        assert_eq!(
            message,
            b"GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n"
        );
        let post = request_message("POST", "/v3/x/close", "1", "N", "{\"mchid\":\"1\"}");
        assert_eq!(post, b"POST\n/v3/x/close\n1\nN\n{\"mchid\":\"1\"}\n");
    }

    #[test]
    fn the_authorization_header_names_every_part_in_wechat_pays_layout() {
        let header = authorization(
            "1900009191",
            "593BEC0C930BF1AFEB40B4A08C8FB242",
            "c2lnbmF0dXJl",
            "1554208460",
            "1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C",
        );
        assert_eq!(
            header,
            "WECHATPAY2-SHA256-RSA2048 mchid=\"1900009191\",nonce_str=\"593BEC0C930BF1AFEB40B4A08C8FB242\",\
             signature=\"c2lnbmF0dXJl\",timestamp=\"1554208460\",serial_no=\"1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C\""
        );
    }
}
