//! A cap on the concurrent streaming calls of one caller (token subject). [`StreamLimitLayer`]
//! gives every call of a streaming method (server-, client- or bidi-streaming in the econsult
//! protos) an empty [`StreamSlot`]; the auth interceptor, once it knows the caller, takes a
//! permit into it or refuses the call with `RESOURCE_EXHAUSTED`; the layer keeps the slot with
//! the response body, so the permit is given back when the stream ends (or the client goes).

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use tonic::Status;

/// Streams one caller may have open at once by default.
pub const DEFAULT_MAX_STREAMS_PER_CALLER: u32 = 20;

/// Open streams per caller, up to a cap.
pub struct StreamLimiter {
    max: u32,
    open: Mutex<HashMap<String, u32>>,
}

/// One open stream of a caller; dropping it gives the place back.
pub struct StreamPermit {
    limiter: Arc<StreamLimiter>,
    subject: String,
}

impl StreamLimiter {
    /// A limiter allowing `max` open streams per caller (0 = no cap).
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a place for `subject`, or `RESOURCE_EXHAUSTED` naming the cap.
    pub fn acquire(self: &Arc<Self>, subject: &str) -> Result<StreamPermit, Status> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(subject.to_owned()).or_insert(0);
        if self.max > 0 && *n >= self.max {
            return Err(Status::resource_exhausted(format!(
                "this caller already has {} streams open, the most allowed \
                 (max streams per caller); close one first",
                self.max
            )));
        }
        *n += 1;
        Ok(StreamPermit {
            limiter: self.clone(),
            subject: subject.to_owned(),
        })
    }

    /// Streams `subject` has open.
    pub fn open(&self, subject: &str) -> u32 {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(subject).copied().unwrap_or(0)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.subject) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.subject);
            }
        }
    }
}

/// The place of a streaming call's permit, shared by [`StreamLimitLayer`] (which keeps it with
/// the response) and the auth interceptor (which fills it).
#[derive(Clone, Default)]
pub struct StreamSlot(Arc<Mutex<Option<StreamPermit>>>);

impl StreamSlot {
    /// Holds `permit` for as long as the call's response lives.
    pub fn hold(&self, permit: StreamPermit) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(permit);
    }
}

/// The paths of the econsult protos' streaming methods.
static STREAMING_METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    use prost::Message as _;
    let mut paths = HashSet::new();
    // Compiled into the binary; a decode failure would leave no stream counted, which the
    // tests of the cap would show.
    if let Ok(set) = prost_types::FileDescriptorSet::decode(econsult_proto::FILE_DESCRIPTOR_SET) {
        for file in &set.file {
            for service in &file.service {
                for m in &service.method {
                    if m.client_streaming() || m.server_streaming() {
                        paths.insert(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            m.name()
                        ));
                    }
                }
            }
        }
    }
    paths
});

/// Whether `path` is a streaming method of the econsult protos.
pub fn is_streaming_method(path: &str) -> bool {
    STREAMING_METHODS.contains(path)
}

/// Tower layer: see the module documentation.
#[derive(Clone, Default)]
pub struct StreamLimitLayer;

impl<S> tower::Layer<S> for StreamLimitLayer {
    type Service = StreamLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StreamLimitService { inner }
    }
}

/// See [`StreamLimitLayer`].
#[derive(Clone)]
pub struct StreamLimitService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for StreamLimitService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !is_streaming_method(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        let slot = StreamSlot::default();
        req.extensions_mut().insert(slot.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|body| tonic::body::Body::new(HoldingBody { body, _slot: slot })))
        })
    }
}

/// A response body that keeps its call's [`StreamSlot`] until it is dropped.
struct HoldingBody {
    body: tonic::body::Body,
    _slot: StreamSlot,
}

impl http_body::Body for HoldingBody {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_its_cap_and_a_place_back_when_a_stream_ends() {
        let l = StreamLimiter::new(2);
        let a = l.acquire("a").expect("first");
        let _b = l.acquire("a").expect("second");
        let err = l.acquire("a").err().expect("third refused");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("2 streams"), "{}", err.message());
        let _other = l.acquire("b").expect("another caller has its own count");
        drop(a);
        assert_eq!(l.open("a"), 1);
        let _c = l.acquire("a").expect("a place came back");
        assert_eq!(l.open("a"), 2);
    }

    #[test]
    fn the_streaming_methods_are_known_from_the_descriptor_set() {
        assert!(is_streaming_method(
            "/econsult.consultation.v1.ConsultationService/Subscribe"
        ));
        assert!(is_streaming_method(
            "/econsult.signalling.v1.SignallingService/Signal"
        ));
        assert!(!is_streaming_method(
            "/econsult.booking.v1.BookingService/FindSlots"
        ));
    }
}
