//! A provider simulator for the recovery tests: one HTTP server on a free port that plays
//! Alipay's gateway (`POST /gateway.do`), WeChat Pay's API (`/v3/pay/transactions/...`) and
//! Stripe's Events API (`GET /v1/events`) at once.
//!
//! Like the providers, it verifies payhook's requests before answering (Alipay's `sign` with the
//! app's public key, WeChat Pay's `Authorization` with the merchant's, Stripe's bearer key) and
//! refuses wrong ones; it signs its answers as Alipay and WeChat Pay do, with the test keys of
//! `tests/vectors`. Its canonical strings are built here from the providers' documents, not
//! with payhook's code, so a mistake in payhook's signing fails here. Every request is recorded.
//!
//! Hostile modes per provider: a bad signature on answers, HTTP 500, a hang longer than the
//! client's timeout, and an answer that is not JSON. A paid amount that differs from the order is
//! just a trade set up with another amount.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, RsaKeyPair};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{NaiveDateTime, Utc};
use serde_json::{json, Value};
use spki::der::Decode;

use payhook::config::Settings;
use payhook::recovery::ask::{self, Asker, ASK_TIMEOUT};

pub const ALIPAY_APP_ID: &str = "2021000000000001";
pub const WECHAT_MCHID: &str = "1900000109";
pub const WECHAT_APPID: &str = "wxd678efh567hg6787";

/// How long a hanging provider keeps payhook waiting: well past the client's timeout.
const HANG: Duration = Duration::from_secs(ASK_TIMEOUT.as_secs() + 10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Provider {
    Alipay,
    WechatPay,
    Stripe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Honest,
    /// Answers signed over other bytes than those sent.
    BadSignature,
    /// HTTP 500.
    ServerError,
    /// No answer until long after the client's timeout.
    Hang,
    /// A 200 whose body is an HTML page (signed, where the provider signs).
    NotJson,
    /// Authentic answers about another order than the one asked after.
    AnotherOrder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TradeState {
    /// Created, not paid (Alipay `WAIT_BUYER_PAY`, WeChat Pay `NOTPAY`).
    Waiting,
    Paid,
    Closed,
    /// Waiting when asked about; the buyer pays just as the merchant closes it, so the close is
    /// refused as paid and the trade is paid from then on.
    PaysAtClose,
    /// Waiting when asked about; the close is accepted, but a payment in flight settles after it
    /// (WeChat Pay answers a close before a payment being entered completes).
    PaysAfterClose,
}

#[derive(Debug, Clone)]
struct Trade {
    state: TradeState,
    amount_minor: i64,
    trade_no: String,
}

/// One request the simulator received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub provider: Provider,
    pub method: String,
    /// Path and query as sent.
    pub path: String,
    /// Alipay's `method` parameter (`alipay.trade.close`); empty for the others.
    pub call: String,
    /// Whether its signature (or key) was right.
    pub verified: bool,
}

struct StripeEvent {
    seq: usize,
    kind: String,
    created: i64,
    delivered: bool,
    json: Value,
}

#[derive(Default)]
struct State {
    trades: BTreeMap<String, Trade>,
    modes: BTreeMap<Provider, Mode>,
    events: Vec<StripeEvent>,
    seen: Vec<Seen>,
    closed: Vec<(Provider, String)>,
}

struct Keys {
    alipay_platform: RsaKeyPair,
    alipay_app_public: Vec<u8>,
    wechat_platform: RsaKeyPair,
    wechat_platform_serial: String,
    wechat_merchant_public: Vec<u8>,
    wechat_merchant_serial: String,
    stripe_api_key: String,
}

struct Shared {
    state: Mutex<State>,
    keys: Keys,
}

/// The simulator, serving until dropped.
pub struct Simulator {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A vector file's text.
pub fn vector(file: &str) -> String {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn vector_json(file: &str) -> Value {
    serde_json::from_str(&vector(file)).unwrap()
}

fn vector_path(file: &str) -> String {
    format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"))
}

fn private_key(file: &str) -> RsaKeyPair {
    let text = vector(file);
    let (label, der) = spki::der::pem::decode_vec(text.trim().as_bytes()).unwrap();
    match label {
        "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der).unwrap(),
        _ => RsaKeyPair::from_der(&der).unwrap(),
    }
}

/// The PKCS #1 key inside a SubjectPublicKeyInfo, PEM or bare base64.
fn public_key(text: &str) -> Vec<u8> {
    let der = if text.starts_with("-----") {
        spki::der::pem::decode_vec(text.trim().as_bytes())
            .unwrap()
            .1
    } else {
        STANDARD.decode(text.trim()).unwrap()
    };
    let spki = spki::SubjectPublicKeyInfoRef::from_der(&der).unwrap();
    spki.subject_public_key.raw_bytes().to_vec()
}

fn sign(key: &RsaKeyPair, message: &[u8]) -> String {
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(
        &signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        message,
        &mut signature,
    )
    .unwrap();
    STANDARD.encode(signature)
}

fn verifies(public_pkcs1: &[u8], message: &[u8], signature_b64: &str) -> bool {
    let Ok(signature) = STANDARD.decode(signature_b64) else {
        return false;
    };
    signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, public_pkcs1)
        .verify(message, &signature)
        .is_ok()
}

/// `1000` as `10.00`.
fn yuan(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

impl Simulator {
    pub fn start() -> Simulator {
        let recovery = vector_json("recovery.json");
        let text = |v: &Value, key: &str| v[key].as_str().unwrap().to_owned();
        let keys = Keys {
            alipay_platform: private_key("alipay-test-private-key.pem"),
            alipay_app_public: public_key(&text(&recovery, "alipay_app_public_key")),
            wechat_platform: private_key("wechatpay-test-private-key.pem"),
            wechat_platform_serial: text(&vector_json("wechatpay.json"), "public_key_id"),
            wechat_merchant_public: public_key(&text(
                &recovery,
                "wechatpay_merchant_public_key_pem",
            )),
            wechat_merchant_serial: text(&recovery, "wechatpay_merchant_serial_no"),
            stripe_api_key: text(&recovery, "stripe_api_key"),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            keys,
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(handle))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        let thread = std::thread::spawn(move || {
            let _ = actix_web::rt::System::new().block_on(server);
        });
        Simulator {
            addr,
            shared,
            handle,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }

    /// The trade the provider holds for `order_no`: its state, amount and trade number.
    pub fn set_trade(&self, order_no: &str, state: TradeState, amount_minor: i64, trade_no: &str) {
        let trade = Trade {
            state,
            amount_minor,
            trade_no: trade_no.to_owned(),
        };
        self.state().trades.insert(order_no.to_owned(), trade);
    }

    pub fn trade_state(&self, order_no: &str) -> Option<TradeState> {
        self.state().trades.get(order_no).map(|t| t.state)
    }

    pub fn set_mode(&self, provider: Provider, mode: Mode) {
        self.state().modes.insert(provider, mode);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state().seen.clone()
    }

    /// The orders closed by a verified close request, by provider.
    pub fn closed(&self) -> Vec<(Provider, String)> {
        self.state().closed.clone()
    }

    /// Adds a Stripe event of `kind` about `object`, created now; returns its id.
    pub fn stripe_event(&self, kind: &str, object: Value, delivered: bool) -> String {
        let mut state = self.state();
        let seq = state.events.len();
        let id = format!("evt_sim{seq:06}");
        let created = Utc::now().timestamp();
        let json = json!({
            "id": id, "object": "event", "api_version": "2024-06-20", "created": created,
            "livemode": false, "pending_webhooks": if delivered { 0 } else { 1 },
            "type": kind, "data": { "object": object },
        });
        state.events.push(StripeEvent {
            seq,
            kind: kind.to_owned(),
            created,
            delivered,
            json,
        });
        id
    }

    /// A paid Checkout Session for `order_no`, as `checkout.session.completed`; returns the
    /// event id.
    pub fn stripe_paid(
        &self,
        order_no: &str,
        amount_minor: i64,
        pi: &str,
        delivered: bool,
    ) -> String {
        let session = json!({
            "id": format!("cs_test_{order_no}"), "object": "checkout.session",
            "client_reference_id": order_no, "amount_total": amount_minor, "currency": "usd",
            "payment_status": "paid", "payment_intent": pi, "metadata": {},
            "customer_details": { "name": "Zoë \"Q\" Müller" },
        });
        self.stripe_event("checkout.session.completed", session, delivered)
    }

    /// Config TOML for `provider`'s channel `name` pointing at this simulator, signing with the
    /// private key in `key_file` (the right one unless a test wants a wrong one).
    pub fn channel_toml(&self, provider: Provider, name: &str, key_file: &str) -> String {
        let url = self.url();
        let key = vector_path(key_file);
        match provider {
            Provider::Alipay => format!(
                "[channels.{name}]\nprovider = \"alipay\"\napp_id = \"{ALIPAY_APP_ID}\"\n\
                 seller_id = \"2088000000000001\"\nalipay_public_key = \"{}\"\n\
                 app_private_key = {{ file = \"{key}\" }}\ngateway_url = \"{url}/gateway.do\"\n",
                vector_json("alipay.json")["alipay_public_key"]
                    .as_str()
                    .unwrap()
            ),
            Provider::WechatPay => {
                let v = vector_json("wechatpay.json");
                format!(
                    "[channels.{name}]\nprovider = \"wechatpay\"\nmchid = \"{WECHAT_MCHID}\"\n\
                     appid = \"{WECHAT_APPID}\"\napiv3_key = \"{}\"\n\
                     merchant_private_key = {{ file = \"{key}\" }}\n\
                     merchant_serial_no = \"{}\"\napi_base = \"{url}\"\n\
                     [channels.{name}.public_keys]\n\"{}\" = '''{}'''\n",
                    v["apiv3_key"].as_str().unwrap(),
                    self.shared.keys.wechat_merchant_serial,
                    v["public_key_id"].as_str().unwrap(),
                    v["public_key_pem"].as_str().unwrap(),
                )
            }
            Provider::Stripe => format!(
                "[channels.{name}]\nprovider = \"stripe\"\nsecrets = [\"whsec_sim\"]\n\
                 currency = \"USD\"\napi_key = \"{key_file}\"\napi_base = \"{url}\"\n"
            ),
        }
    }

    /// An asker for `provider`'s channel, set up as a merchant would with the right keys.
    pub fn asker(&self, provider: Provider) -> Asker {
        let key = match provider {
            Provider::Alipay => "alipay-app-test-private-key.pem".to_owned(),
            Provider::WechatPay => "wechatpay-merchant-test-private-key.pem".to_owned(),
            Provider::Stripe => self.shared.keys.stripe_api_key.clone(),
        };
        self.asker_with(provider, &key)
    }

    /// An asker for `provider`'s channel signing with `key` (a key file; Stripe: the API key).
    pub fn asker_with(&self, provider: Provider, key: &str) -> Asker {
        let name = channel_name(provider);
        let settings = Settings::from_toml(&self.channel_toml(provider, name, key)).unwrap();
        let (name, cfg) = settings.channels.into_iter().next().unwrap();
        Asker::new(&name, &cfg, ask::http_client().unwrap())
            .unwrap()
            .expect("the channel has query keys")
    }
}

/// The channel name the simulator's askers use.
pub fn channel_name(provider: Provider) -> &'static str {
    match provider {
        Provider::Alipay => "ali",
        Provider::WechatPay => "wx",
        Provider::Stripe => "stripe",
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        actix_web::rt::System::new().block_on(handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An answer: status, headers and body.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Reply {
    fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type", "application/json".to_owned())],
            body,
        }
    }
}

async fn handle(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let path = req.uri().path().to_owned();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or(path.clone(), |p| p.as_str().to_owned());
    let provider = if path == "/gateway.do" {
        Provider::Alipay
    } else if path.starts_with("/v3/pay/transactions/out-trade-no/") {
        Provider::WechatPay
    } else if path == "/v1/events" {
        Provider::Stripe
    } else {
        return HttpResponse::NotFound().finish();
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mode = shared.mode(provider);
    let (seen, reply) = match provider {
        Provider::Alipay => shared.alipay(&body, mode),
        Provider::WechatPay => shared.wechat(
            req.method().as_str(),
            &path_and_query,
            &header("Authorization"),
            &body,
            mode,
        ),
        Provider::Stripe => shared.stripe(&req, &header("Authorization"), mode),
    };
    shared.state.lock().unwrap().seen.push(Seen {
        provider,
        method: req.method().as_str().to_owned(),
        path: path_and_query,
        call: seen.0,
        verified: seen.1,
    });
    let reply = match mode {
        Mode::ServerError => Reply::json(500, "{\"error\":\"internal\"}".to_owned()),
        Mode::Hang => {
            actix_web::rt::time::sleep(HANG).await;
            reply
        }
        _ => reply,
    };
    let mut response =
        HttpResponse::build(actix_web::http::StatusCode::from_u16(reply.status).unwrap());
    for (name, value) in reply.headers {
        response.insert_header((name, value));
    }
    response.body(reply.body)
}

impl Shared {
    fn mode(&self, provider: Provider) -> Mode {
        let state = self.state.lock().unwrap();
        state.modes.get(&provider).copied().unwrap_or(Mode::Honest)
    }

    /// Alipay's gateway: the request's `sign` over its sorted non-empty parameters but `sign`
    /// (Alipay's "自行实现签名"), then `alipay.trade.query` or `alipay.trade.close`.
    fn alipay(&self, body: &[u8], mode: Mode) -> ((String, bool), Reply) {
        let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        let get = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        let mut signed: Vec<&(String, String)> = params
            .iter()
            .filter(|(k, v)| k != "sign" && !v.is_empty())
            .collect();
        signed.sort();
        let content: Vec<String> = signed.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let beijing = Utc::now().naive_utc() + chrono::Duration::hours(8);
        let on_time = NaiveDateTime::parse_from_str(get("timestamp"), "%Y-%m-%d %H:%M:%S")
            .is_ok_and(|t| (t - beijing).num_seconds().abs() < 600);
        let verified = verifies(
            &self.keys.alipay_app_public,
            content.join("&").as_bytes(),
            get("sign"),
        ) && get("app_id") == ALIPAY_APP_ID
            && get("sign_type") == "RSA2"
            && get("charset") == "utf-8"
            && get("format") == "JSON"
            && get("version") == "1.0"
            && on_time;
        let method = get("method").to_owned();
        if !verified {
            let refused = r#"{"error_response":{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-signature","sub_msg":"验签出错"}}"#;
            return ((method, false), Reply::json(200, refused.to_owned()));
        }
        let biz: Value = serde_json::from_str(get("biz_content")).unwrap_or_default();
        let asked = biz["out_trade_no"].as_str().unwrap_or_default().to_owned();
        let mut state = self.state.lock().unwrap();
        let trade = state.trades.get(&asked).cloned();
        let order_no = match mode {
            Mode::AnotherOrder => format!("X{asked}"),
            _ => asked.clone(),
        };
        let not_exist = format!(
            r#"{{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在","out_trade_no":"{order_no}"}}"#
        );
        let content = match (method.as_str(), trade) {
            ("alipay.trade.query", None) => not_exist,
            ("alipay.trade.query", Some(t)) => {
                let status = match t.state {
                    TradeState::Waiting | TradeState::PaysAtClose | TradeState::PaysAfterClose => {
                        "WAIT_BUYER_PAY"
                    }
                    TradeState::Paid => "TRADE_SUCCESS",
                    TradeState::Closed => "TRADE_CLOSED",
                };
                let amount = yuan(t.amount_minor);
                // Escapes and text a re-encoding would change: the signature covers these bytes.
                format!(
                    r#"{{"code":"10000","msg":"Success","buyer_logon_id":"158****1562","buyer_pay_amount":"{amount}","buyer_user_id":"2088102177846880","fund_bill_list":[{{"amount":"{amount}","fund_channel":"ALIPAYACCOUNT"}}],"invoice_amount":"{amount}","out_trade_no":"{order_no}","point_amount":"0.00","receipt_amount":"{amount}","send_pay_date":"2026-11-22 10:00:00","store_name":"测试门店 \"一号\" \/ \u65d7\u8230","total_amount":"{amount}","trade_no":"{}","trade_status":"{status}"}}"#,
                    t.trade_no
                )
            }
            ("alipay.trade.close", None) => not_exist,
            ("alipay.trade.close", Some(t))
                if matches!(t.state, TradeState::Paid | TradeState::PaysAtClose) =>
            {
                if let Some(trade) = state.trades.get_mut(&asked) {
                    trade.state = TradeState::Paid;
                }
                r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_STATUS_ERROR","sub_msg":"交易状态不合法"}"#.to_owned()
            }
            ("alipay.trade.close", Some(t)) => {
                state.closed.push((Provider::Alipay, asked.clone()));
                if let Some(trade) = state.trades.get_mut(&asked) {
                    trade.state = match trade.state {
                        TradeState::PaysAfterClose => TradeState::Paid,
                        _ => TradeState::Closed,
                    };
                }
                format!(
                    r#"{{"code":"10000","msg":"Success","out_trade_no":"{order_no}","trade_no":"{}"}}"#,
                    t.trade_no
                )
            }
            _ => r#"{"code":"40004","msg":"Business Failed","sub_code":"isv.invalid-method"}"#
                .to_owned(),
        };
        let signed_bytes = match mode {
            Mode::BadSignature => format!("{content} "),
            _ => content.clone(),
        };
        let sign = sign(&self.keys.alipay_platform, signed_bytes.as_bytes());
        let key = format!("{}_response", method.replace('.', "_"));
        let body = match mode {
            Mode::NotJson => "<html><body>502 Bad Gateway</body></html>".to_owned(),
            _ => format!(r#"{{"{key}":{content},"sign":"{sign}"}}"#),
        };
        ((method, true), Reply::json(200, body))
    }

    /// WeChat Pay's API: the `Authorization` signature over `METHOD\nPATH\nTS\nNONCE\nBODY\n`
    /// with the merchant's key, then the transaction or its close, answers signed over
    /// `TS\nNONCE\nBODY\n` with the platform key.
    fn wechat(
        &self,
        method: &str,
        path_and_query: &str,
        authorization: &str,
        body: &[u8],
        mode: Mode,
    ) -> ((String, bool), Reply) {
        let body = String::from_utf8_lossy(body).into_owned();
        let verified = self.wechat_request_verifies(method, path_and_query, authorization, &body);
        if !verified {
            let refused = r#"{"code":"SIGN_ERROR","message":"签名错误"}"#.to_owned();
            return ((String::new(), false), Reply::json(401, refused));
        }
        let rest = path_and_query.trim_start_matches("/v3/pay/transactions/out-trade-no/");
        let mut state = self.state.lock().unwrap();
        let (status, answer) = if let Some(order_no) = rest.strip_suffix("/close") {
            let mchid_ok =
                serde_json::from_str::<Value>(&body).is_ok_and(|b| b["mchid"] == WECHAT_MCHID);
            let trade = state.trades.get(order_no).cloned();
            match trade {
                _ if !mchid_ok => (
                    400,
                    r#"{"code":"PARAM_ERROR","message":"mchid"}"#.to_owned(),
                ),
                Some(t) if matches!(t.state, TradeState::Paid | TradeState::PaysAtClose) => {
                    if let Some(trade) = state.trades.get_mut(order_no) {
                        trade.state = TradeState::Paid;
                    }
                    (
                        400,
                        r#"{"code":"ORDERPAID","message":"订单已支付"}"#.to_owned(),
                    )
                }
                Some(t) if t.state == TradeState::Closed => (
                    400,
                    r#"{"code":"ORDER_CLOSED","message":"订单已关闭"}"#.to_owned(),
                ),
                _ => {
                    state
                        .closed
                        .push((Provider::WechatPay, order_no.to_owned()));
                    if let Some(trade) = state.trades.get_mut(order_no) {
                        trade.state = match trade.state {
                            TradeState::PaysAfterClose => TradeState::Paid,
                            _ => TradeState::Closed,
                        };
                    }
                    (204, String::new())
                }
            }
        } else {
            let (order_no, query) = rest.split_once('?').unwrap_or((rest, ""));
            match state.trades.get(order_no) {
                _ if query != format!("mchid={WECHAT_MCHID}") => (
                    400,
                    r#"{"code":"PARAM_ERROR","message":"mchid"}"#.to_owned(),
                ),
                None => (
                    404,
                    r#"{"code":"ORDER_NOT_EXIST","message":"订单不存在"}"#.to_owned(),
                ),
                Some(t) if mode == Mode::AnotherOrder => {
                    (200, wechat_transaction(&format!("X{order_no}"), t))
                }
                Some(t) => (200, wechat_transaction(order_no, t)),
            }
        };
        let answer = match mode {
            Mode::NotJson => "<html><body>502 Bad Gateway</body></html>".to_owned(),
            _ => answer,
        };
        let timestamp = Utc::now().timestamp().to_string();
        let nonce = uuid::Uuid::now_v7().simple().to_string();
        let signed = match mode {
            Mode::BadSignature => format!("{timestamp}\n{nonce}\n{answer} \n"),
            _ => format!("{timestamp}\n{nonce}\n{answer}\n"),
        };
        let signature = sign(&self.keys.wechat_platform, signed.as_bytes());
        let mut reply = Reply::json(status, answer);
        reply.headers.extend([
            ("Wechatpay-Timestamp", timestamp),
            ("Wechatpay-Nonce", nonce),
            ("Wechatpay-Signature", signature),
            ("Wechatpay-Serial", self.keys.wechat_platform_serial.clone()),
            (
                "Wechatpay-Signature-Type",
                "WECHATPAY2-SHA256-RSA2048".to_owned(),
            ),
            ("Request-ID", uuid::Uuid::now_v7().to_string()),
        ]);
        ((String::new(), true), reply)
    }

    fn wechat_request_verifies(
        &self,
        method: &str,
        path_and_query: &str,
        authorization: &str,
        body: &str,
    ) -> bool {
        let Some(params) = authorization.strip_prefix("WECHATPAY2-SHA256-RSA2048 ") else {
            return false;
        };
        let params: BTreeMap<&str, &str> = params
            .split(',')
            .filter_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                Some((key, value.strip_prefix('"')?.strip_suffix('"')?))
            })
            .collect();
        let get = |key: &str| params.get(key).copied().unwrap_or_default();
        let on_time = get("timestamp")
            .parse::<i64>()
            .is_ok_and(|t| (Utc::now().timestamp() - t).abs() <= 300);
        let message = format!(
            "{method}\n{path_and_query}\n{}\n{}\n{body}\n",
            get("timestamp"),
            get("nonce_str")
        );
        params.len() == 5
            && get("mchid") == WECHAT_MCHID
            && get("serial_no") == self.keys.wechat_merchant_serial
            && on_time
            && verifies(
                &self.keys.wechat_merchant_public,
                message.as_bytes(),
                get("signature"),
            )
    }

    /// Stripe's Events API: the bearer key, then the filtered list, newest first, paged with
    /// `starting_after` and `ending_before` as Stripe pages.
    fn stripe(
        &self,
        req: &HttpRequest,
        authorization: &str,
        mode: Mode,
    ) -> ((String, bool), Reply) {
        if authorization != format!("Bearer {}", self.keys.stripe_api_key) {
            let refused = json!({ "error": {
                "message": "Invalid API Key provided: sk_test_****0000",
                "type": "invalid_request_error" } });
            return (
                (String::new(), false),
                Reply::json(401, refused.to_string()),
            );
        }
        let query: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes())
            .into_owned()
            .collect();
        let all = |key: &str| -> Vec<&str> {
            query
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        let one = |key: &str| all(key).first().copied();
        let types = all("types[]");
        let since: i64 = one("created[gte]")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let limit: usize = one("limit").and_then(|v| v.parse().ok()).unwrap_or(10);
        let delivery = one("delivery_success").map(|v| v == "true");
        let state = self.state.lock().unwrap();
        let seq_of = |id: &str| {
            state
                .events
                .iter()
                .find(|e| e.json["id"] == id)
                .map(|e| e.seq)
        };
        let mut matching: Vec<&StripeEvent> = state
            .events
            .iter()
            .rev()
            .filter(|e| types.is_empty() || types.contains(&e.kind.as_str()))
            .filter(|e| e.created >= since)
            .filter(|e| delivery.is_none_or(|d| d == e.delivered))
            .collect();
        let (data, has_more) = match (one("starting_after"), one("ending_before")) {
            (Some(id), _) => {
                let Some(seq) = seq_of(id) else {
                    return ((String::new(), true), missing("starting_after"));
                };
                matching.retain(|e| e.seq < seq);
                let more = matching.len() > limit;
                matching.truncate(limit);
                (matching, more)
            }
            (None, Some(id)) => {
                let Some(seq) = seq_of(id) else {
                    return ((String::new(), true), missing("ending_before"));
                };
                matching.retain(|e| e.seq > seq);
                // The `limit` events just newer than the cursor, still newest first.
                let more = matching.len() > limit;
                let page = matching.split_off(matching.len().saturating_sub(limit));
                (page, more)
            }
            (None, None) => {
                let more = matching.len() > limit;
                matching.truncate(limit);
                (matching, more)
            }
        };
        let body = match mode {
            Mode::NotJson => "<html><body>502 Bad Gateway</body></html>".to_owned(),
            _ => {
                let data: Vec<&Value> = data.iter().map(|e| &e.json).collect();
                json!({ "object": "list", "url": "/v1/events", "has_more": has_more, "data": data })
                    .to_string()
            }
        };
        let mut reply = Reply::json(200, body);
        reply.headers.push((
            "Request-Id",
            format!("req_{}", uuid::Uuid::now_v7().simple()),
        ));
        ((String::new(), true), reply)
    }
}

fn missing(param: &str) -> Reply {
    let body = json!({ "error": { "type": "invalid_request_error", "code": "resource_missing",
                                  "param": param, "message": "No such event" } });
    Reply::json(400, body.to_string())
}

/// WeChat Pay's transaction as its query API answers it.
fn wechat_transaction(order_no: &str, trade: &Trade) -> String {
    let amount = json!({ "total": trade.amount_minor, "payer_total": trade.amount_minor,
                         "currency": "CNY", "payer_currency": "CNY" });
    let mut transaction = json!({
        "appid": WECHAT_APPID, "mchid": WECHAT_MCHID, "out_trade_no": order_no,
        "attach": "", "amount": amount,
    });
    let (state, desc) = match trade.state {
        TradeState::Waiting | TradeState::PaysAtClose | TradeState::PaysAfterClose => {
            ("NOTPAY", "订单未支付")
        }
        TradeState::Paid => ("SUCCESS", "支付成功"),
        TradeState::Closed => ("CLOSED", "订单已关闭"),
    };
    transaction["trade_state"] = state.into();
    transaction["trade_state_desc"] = desc.into();
    if trade.state == TradeState::Paid {
        transaction["transaction_id"] = trade.trade_no.clone().into();
        transaction["trade_type"] = "NATIVE".into();
        transaction["success_time"] = "2026-11-22T10:00:00+08:00".into();
        transaction["payer"] = json!({ "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" });
    }
    transaction.to_string()
}
