//! A tower layer around the tonic router that counts every finished gRPC call by method and
//! status code. The code is read where gRPC puts it: the response headers of a
//! trailers-only answer (an error before any message), else the trailers at the end of the
//! body. A call whose body is dropped before its trailers (the client went away, or a stream
//! was cut at shutdown) counts as `CANCELLED`.

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for GrpcMetrics<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Response = Response<CountedBody<ResB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let Some(metrics) = super::get() else {
            let fut = self.inner.call(req);
            return Box::pin(async move { fut.await.map(|r| r.map(|b| CountedBody { inner: b, method: None })) });
        };
        let method = label(req.uri().path());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let (parts, body) = resp.into_parts();
            let method = match code(&parts.headers) {
                // Trailers-only: the call is over.
                Some(c) => {
                    metrics.grpc_request(&method, c);
                    None
                }
                None => Some(method),
            };
            Ok(Response::from_parts(parts, CountedBody { inner: body, method }))
        })
    }
}

/// Methods are named by path; a path that is not `/package.Service/Method` is `other`, so
/// random probes do not grow the label set.
fn label(path: &str) -> String {
    let ok = path.len() <= 128
        && path.starts_with('/')
        && path[1..].split_once('/').is_some_and(|(svc, m)| {
            !svc.is_empty()
                && !m.is_empty()
                && svc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
                && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    if ok { path.to_string() } else { "other".into() }
}

fn code(h: &HeaderMap) -> Option<&'static str> {
    let n: i32 = h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
    Some(tonic::Code::from_i32(n).description_name())
}

trait CodeName {
    fn description_name(self) -> &'static str;
}

impl CodeName for tonic::Code {
    fn description_name(self) -> &'static str {
        use tonic::Code::*;
        match self {
            Ok => "OK",
            Cancelled => "CANCELLED",
            Unknown => "UNKNOWN",
            InvalidArgument => "INVALID_ARGUMENT",
            DeadlineExceeded => "DEADLINE_EXCEEDED",
            NotFound => "NOT_FOUND",
            AlreadyExists => "ALREADY_EXISTS",
            PermissionDenied => "PERMISSION_DENIED",
            ResourceExhausted => "RESOURCE_EXHAUSTED",
            FailedPrecondition => "FAILED_PRECONDITION",
            Aborted => "ABORTED",
            OutOfRange => "OUT_OF_RANGE",
            Unimplemented => "UNIMPLEMENTED",
            Internal => "INTERNAL",
            Unavailable => "UNAVAILABLE",
            DataLoss => "DATA_LOSS",
            Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// The response body, counting the call when its trailers pass (or when it is dropped).
pub struct CountedBody<B> {
    inner: B,
    /// Set until the call has been counted.
    method: Option<String>,
}

impl<B> CountedBody<B> {
    fn count(&mut self, code: &'static str) {
        if let (Some(method), Some(m)) = (self.method.take(), super::get()) {
            m.grpc_request(&method, code);
        }
    }
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        self.count("CANCELLED");
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    let c = code(t).unwrap_or("UNKNOWN");
                    self.count(c);
                }
            }
            Poll::Ready(Some(Err(_))) => self.count("UNKNOWN"),
            Poll::Ready(None) => self.count("UNKNOWN"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(label("/perm.v1.PermService/Enforce"), "/perm.v1.PermService/Enforce");
        assert_eq!(label("/x"), "other");
        assert_eq!(label("/a/b/c"), "other");
        assert_eq!(label(&format!("/{}/M", "s".repeat(200))), "other");
    }
}
