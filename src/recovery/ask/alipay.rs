//! Asking Alipay: `alipay.trade.query` and `alipay.trade.close` through the OpenAPI gateway,
//! signed with the app's private key. An answer is `{"alipay_trade_query_response": {...},
//! "sign": "..."}`, and the signature covers the exact bytes of the response object as sent, so
//! they are cut from the answer's text, never re-encoded.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::answer::{rejected, said, send, Answer, AskError, Closing, Queried};
use crate::books::orders::Order;
use crate::config::AlipayConfig;
use crate::domain::clock::Clock;
use crate::domain::ids::{ChannelName, OrderNo};
use crate::notify::alipay::{request_content, Alipay, Answer as Response};
use crate::notify::shown;
use crate::notify::sign::{china, RsaSigner};

const QUERY: &str = "alipay.trade.query";
const CLOSE: &str = "alipay.trade.close";

/// Alipay signs in its body, not in headers: none are kept as evidence.
const NO_HEADERS: &[&str] = &[];

/// An Alipay channel's app, with the private key it signs its requests with.
pub struct AlipayAsker {
    channel: ChannelName,
    adapter: Alipay,
    app_id: String,
    key: RsaSigner,
    gateway: String,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
}

impl AlipayAsker {
    pub(super) fn new(
        channel: &ChannelName,
        cfg: &AlipayConfig,
        http: reqwest::Client,
        clock: Arc<dyn Clock>,
    ) -> Result<Option<AlipayAsker>, String> {
        let Some(key) = &cfg.app_private_key else {
            return Ok(None);
        };
        let key =
            RsaSigner::from_text(key.expose()).map_err(|e| format!("app_private_key: {e}"))?;
        Ok(Some(AlipayAsker {
            channel: channel.clone(),
            adapter: Alipay::new(cfg)?,
            app_id: cfg.app_id.clone(),
            key,
            gateway: cfg.gateway_url.clone(),
            http,
            clock,
        }))
    }

    pub(super) fn with_clock(self, clock: Arc<dyn Clock>) -> AlipayAsker {
        AlipayAsker { clock, ..self }
    }

    /// `alipay.trade.query`: the trade's status, or that Alipay has no trade for the order yet
    /// (the buyer never opened the payment page, or has not paid).
    pub(super) async fn query(&self, order: &Order) -> Result<Queried, AskError> {
        let (answer, response) = self.call(QUERY, &order.order_no).await?;
        let field = |key| {
            response
                .text(key)
                .map_err(|r| rejected(&answer, NO_HEADERS, r))
        };
        match (field("code")?, field("sub_code")?) {
            (Some("10000"), _) if field("trade_status")? == Some("WAIT_BUYER_PAY") => {
                match field("out_trade_no")? {
                    Some(no) if no != order.order_no.as_str() => {
                        Err(answer.invalid(NO_HEADERS, "the answer is about another order"))
                    }
                    _ => Ok(Queried::NotPaid),
                }
            }
            (Some("10000"), _) => {
                let notification = self.adapter.answer_notification(&self.channel, &response);
                said(&answer, NO_HEADERS, order, notification)
            }
            (Some("40004"), Some("ACQ.TRADE_NOT_EXIST")) => Ok(Queried::NotPaid),
            (code, sub_code) => Err(refused(&answer, QUERY, code, sub_code)),
        }
    }

    /// `alipay.trade.close`. A trade Alipay does not know has nothing to close; one it refuses to
    /// close (`ACQ.TRADE_STATUS_ERROR`) is paid, finished or already closed.
    pub(super) async fn close(&self, order: &Order) -> Result<Closing, AskError> {
        let (answer, response) = self.call(CLOSE, &order.order_no).await?;
        let field = |key| {
            response
                .text(key)
                .map_err(|r| rejected(&answer, NO_HEADERS, r))
        };
        match (field("code")?, field("sub_code")?) {
            (Some("10000"), _) => match field("out_trade_no")? {
                Some(no) if no != order.order_no.as_str() => {
                    Err(answer.invalid(NO_HEADERS, "the answer is about another order"))
                }
                _ => Ok(Closing::Closed),
            },
            (Some("40004"), Some("ACQ.TRADE_NOT_EXIST")) => Ok(Closing::Closed),
            (Some("40004"), Some("ACQ.TRADE_STATUS_ERROR")) => Ok(Closing::AlreadyPaid),
            (code, sub_code) => Err(refused(&answer, CLOSE, code, sub_code)),
        }
    }

    /// Calls `method` about `order_no` and verifies the answer: its response object, cut from
    /// the text as sent, must carry Alipay's signature.
    async fn call(&self, method: &str, order_no: &OrderNo) -> Result<(Answer, Response), AskError> {
        let what = format!("Alipay {method}");
        let request = self
            .http
            .post(&self.gateway)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(self.request(method, order_no));
        let answer = send(request, &what).await?;
        let invalid = |why: String| answer.invalid(NO_HEADERS, format!("{what}: {why}"));
        let text = std::str::from_utf8(&answer.body)
            .map_err(|_| invalid("answer is not UTF-8 JSON".to_owned()))?;
        let key = format!("{}_response", method.replace('.', "_"));
        let parts = split_answer(text, &key).map_err(invalid)?;
        let Some(content) = parts.content else {
            let refusal = parts.error.and_then(|e| Response::parse(e.as_bytes()).ok());
            let field = |key| refusal.as_ref().and_then(|r| r.text(key).ok().flatten());
            return Err(refused(&answer, method, field("code"), field("sub_code")));
        };
        let sign = parts
            .sign
            .ok_or_else(|| invalid("the answer is not signed".to_owned()))?;
        self.adapter
            .check_answer_signature(content.as_bytes(), &sign)
            .map_err(|r| rejected(&answer, NO_HEADERS, r))?;
        let response =
            Response::parse(content.as_bytes()).map_err(|r| rejected(&answer, NO_HEADERS, r))?;
        Ok((answer, response))
    }

    /// The request's form: the common parameters and `biz_content`, signed RSA2 with the app's
    /// key over [`request_content`].
    fn request(&self, method: &str, order_no: &OrderNo) -> String {
        let timestamp = china(self.clock.now())
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        let biz_content = serde_json::json!({ "out_trade_no": order_no.as_str() }).to_string();
        let mut params = vec![
            ("app_id", self.app_id.clone()),
            ("method", method.to_owned()),
            ("format", "JSON".to_owned()),
            ("charset", "utf-8".to_owned()),
            ("sign_type", "RSA2".to_owned()),
            ("timestamp", timestamp),
            ("version", "1.0".to_owned()),
            ("biz_content", biz_content),
        ];
        let sign = STANDARD.encode(self.key.sign_sha256(&request_content(&params)));
        params.push(("sign", sign));
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish()
    }
}

/// An answer that is not about the trade: the gateway refused the request (`error_response`,
/// a bad signature or app id) or the method failed. Alipay's own "try again" codes are
/// unreachable; the rest are for a human.
fn refused(answer: &Answer, method: &str, code: Option<&str>, sub_code: Option<&str>) -> AskError {
    let code = code.unwrap_or("none");
    if code == "20000" || sub_code == Some("ACQ.SYSTEM_ERROR") {
        return AskError::Unreachable(format!("Alipay {method}: code {code}, try again"));
    }
    let sub_code = sub_code.map_or("none".to_owned(), shown);
    answer.invalid(
        NO_HEADERS,
        format!(
            "Alipay {method} answered code {}, sub_code {sub_code}",
            shown(code)
        ),
    )
}

/// What an answer's top-level object holds, each value's text exactly as sent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AnswerParts<'a> {
    /// The response object named by the method (`alipay_trade_query_response`), as signed.
    pub content: Option<&'a str>,
    /// `error_response`: the gateway refused the request itself.
    pub error: Option<&'a str>,
    /// Alipay's signature of `content`, base64.
    pub sign: Option<String>,
}

/// Splits an answer into its response object's exact text, `error_response` and `sign`, using a
/// JSON parser for the structure (so a key name inside a string value or a nested object is not
/// taken for the real one) and keeping each value's bytes as sent. A key given twice is refused:
/// which of the two was signed could not be told.
pub fn split_answer<'a>(text: &'a str, key: &str) -> Result<AnswerParts<'a>, String> {
    let members = {
        let mut de = serde_json::Deserializer::from_str(text);
        let members = (&mut de)
            .deserialize_map(Members(std::marker::PhantomData))
            .map_err(|e| format!("answer is not a JSON object: {}", category(&e)))?;
        de.end()
            .map_err(|_| "answer has text after its object".to_owned())?;
        members
    };
    let mut parts = AnswerParts::default();
    for (name, value) in members {
        let slot = match name.as_str() {
            n if n == key => &mut parts.content,
            "error_response" => &mut parts.error,
            "sign" => {
                if parts.sign.is_some() {
                    return Err("sign appears twice".to_owned());
                }
                let sign = serde_json::from_str::<String>(value.get())
                    .map_err(|_| "sign is not a string".to_owned())?;
                parts.sign = Some(sign);
                continue;
            }
            _ => continue,
        };
        if slot.replace(value.get()).is_some() {
            return Err(format!("{} appears twice", shown(&name)));
        }
    }
    Ok(parts)
}

/// An object's members in order, each value borrowed as its raw text.
struct Members<'a>(std::marker::PhantomData<&'a ()>);

impl<'de> Visitor<'de> for Members<'de> {
    type Value = Vec<(String, &'de RawValue)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
            members.push(member);
        }
        Ok(members)
    }
}

/// What went wrong in a serde_json error, never the offending text.
fn category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "not an object",
        serde_json::error::Category::Eof => "cut short",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "alipay_trade_query_response";

    fn content(text: &str) -> Option<&str> {
        split_answer(text, KEY).unwrap().content
    }

    #[test]
    fn the_response_object_is_cut_from_the_answer_exactly_as_sent() {
        let object = r#"{"code":"10000","msg":"Success","store_name":"测试 \"一号\" \/ 店","x":"\u4e2d}","n":{"a":[1,{"b":"}"}]},"total_amount":"10.00"}"#;
        for text in [
            format!(r#"{{"{KEY}":{object},"sign":"c2ln"}}"#),
            format!(" {{\n  \"{KEY}\" :\t{object} ,\n  \"sign\" : \"c2ln\"\n}}\n"),
            format!(r#"{{"sign":"c2ln","{KEY}":{object}}}"#),
            // The key's name inside a value, and nested under another key, is not the key.
            format!(
                r#"{{"note":"\"{KEY}\":{{}}","other":{{"{KEY}":{{}}}},"{KEY}":{object},"sign":"c2ln"}}"#
            ),
        ] {
            let parts = split_answer(&text, KEY).unwrap();
            assert_eq!(parts.content, Some(object), "{text}");
            assert_eq!(parts.sign.as_deref(), Some("c2ln"));
        }
        // A sign with an escape is the decoded string; its object is still cut as sent.
        let parts =
            split_answer(r#"{"sign":"a\/b","error_response":{"code":"40002"}}"#, KEY).unwrap();
        assert_eq!(parts.sign.as_deref(), Some("a/b"));
        assert_eq!(parts.error, Some(r#"{"code":"40002"}"#));
        assert_eq!(parts.content, None);
    }

    #[test]
    fn an_answer_that_is_not_one_object_with_each_key_once_is_refused() {
        for text in [
            "",
            "<html>busy</html>",
            "[]",
            r#"{"alipay_trade_query_response":{}"#,
            r#"{"alipay_trade_query_response":{}} {}"#,
            r#"{"alipay_trade_query_response":{},"alipay_trade_query_response":{}}"#,
            r#"{"alipay_trade_query_response":{},"sign":"a","sign":"b"}"#,
            r#"{"alipay_trade_query_response":{},"sign":5}"#,
        ] {
            assert!(split_answer(text, KEY).is_err(), "{text:?}");
        }
        assert_eq!(content(r#"{"sign":"x"}"#), None);
        assert_eq!(
            content(r#"{"alipay_trade_query_response":null}"#),
            Some("null")
        );
    }

    #[test]
    fn a_request_signs_every_non_empty_parameter_with_sign_type_as_alipay_documents() {
        // Alipay's "自行实现签名" example: sorted, sign left out, sign_type kept.
        let biz = r#"{"button":[{"actionParam":"ZFB_HFCZ","actionType":"out","name":"话费充值"}]}"#;
        let params = [
            ("app_id", "2014072300007148"),
            ("method", "alipay.mobile.public.menu.add"),
            ("charset", "GBK"),
            ("sign_type", "RSA2"),
            ("timestamp", "2014-07-24 03:07:50"),
            ("biz_content", biz),
            ("sign", "left out"),
            ("notify_url", ""),
            ("version", "1.0"),
        ];
        let expected = format!(
            "app_id=2014072300007148&biz_content={biz}&charset=GBK&method=alipay.mobile.public.menu.add&sign_type=RSA2&timestamp=2014-07-24 03:07:50&version=1.0"
        );
        assert_eq!(
            String::from_utf8(request_content(&params)).unwrap(),
            expected
        );
    }
}
