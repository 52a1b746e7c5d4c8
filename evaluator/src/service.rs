//! The gRPC server: the `rfb.v1.Evaluator` service, the standard health service
//! (`rfb.v1.Evaluator` reported SERVING), server reflection (v1 and v1alpha), optional
//! bearer-token authentication and TLS.
//!
//! Requests are validated on the async runtime (blocking parts on the blocking pool) before
//! anything is queued, so a bad request costs nothing and gets its status at once. A request
//! whose results are all cached is answered without entering the queue.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rfb_proto::v1::evaluator_server::{Evaluator, EvaluatorServer};
use rfb_proto::v1::{
    evaluate_event::Event, DescribeModelRequest, Done, EvaluateEvent, EvaluateRequest, ListModelsRequest,
    ListModelsResponse, ModelInfo,
};
use tokio_stream::Stream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::auth::BearerAuth;
use crate::catalog::{Catalog, EngineConfig};
use crate::engine::EngineError;
use crate::worker::{spawn_worker, Job, Queue};

/// Fully qualified name of the service, as health checks name it.
pub const SERVICE_NAME: &str = "rfb.v1.Evaluator";

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TLS set-up failed: {0}")]
    Tls(String),
    #[error("reflection set-up failed: {0}")]
    Reflection(String),
    #[error("cannot start the worker thread: {0}")]
    Worker(std::io::Error),
    #[error("the server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// PEM certificate chain and private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub certificate_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Everything `evaluator serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub engine: EngineConfig,
    pub token: Option<String>,
    pub tls: Option<TlsFiles>,
}

/// The `rfb.v1.Evaluator` implementation.
pub struct EvaluatorService {
    catalog: Arc<Catalog>,
    queue: Arc<Queue>,
}

impl EvaluatorService {
    pub fn new(catalog: Arc<Catalog>, queue: Arc<Queue>) -> Self {
        EvaluatorService { catalog, queue }
    }
}

/// The `grpc-timeout` header as a deadline.
fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    let text = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let value: u64 = digits.parse().ok()?;
    let duration = match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    };
    Instant::now().checked_add(duration)
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(work).await.map_err(|e| Status::internal(format!("request handler failed: {e}")))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<EvaluateEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Evaluator for EvaluatorService {
    async fn list_models(&self, _request: Request<ListModelsRequest>) -> Result<Response<ListModelsResponse>, Status> {
        let catalog = self.catalog.clone();
        let (models, problems) = blocking(move || catalog.list_models()).await?;
        Ok(Response::new(ListModelsResponse { models, problems }))
    }

    async fn describe_model(&self, request: Request<DescribeModelRequest>) -> Result<Response<ModelInfo>, Status> {
        let catalog = self.catalog.clone();
        let name = request.into_inner().model;
        let info = blocking(move || catalog.describe(&name)).await??;
        Ok(Response::new(info))
    }

    type EvaluateStream = EventStream;

    async fn evaluate(&self, request: Request<EvaluateRequest>) -> Result<Response<Self::EvaluateStream>, Status> {
        let received = Instant::now();
        let deadline = deadline_of(&request);
        let request = request.into_inner();
        let catalog = self.catalog.clone();
        let prepared = blocking(move || catalog.prepare(&request)).await?.map_err(|e: EngineError| {
            tracing::info!(error = %e, "request refused");
            Status::from(e)
        })?;
        let catalog = self.catalog.clone();
        let (prepared, cached) = blocking(move || {
            let cached = catalog.all_cached(&prepared);
            (prepared, cached)
        })
        .await?;
        if let Some(results) = cached {
            tracing::info!(model = %prepared.model, attacks = results.len(), "answered from the cache");
            let mut events: Vec<Result<EvaluateEvent, Status>> =
                results.into_iter().map(|r| Ok(EvaluateEvent { event: Some(Event::Result(r)) })).collect();
            events.push(Ok(EvaluateEvent {
                event: Some(Event::Done(Done { elapsed_seconds: received.elapsed().as_secs_f64() })),
            }));
            return Ok(Response::new(Box::pin(tokio_stream::iter(events))));
        }
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        self.queue.submit(Job::new(prepared, sender, deadline));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(receiver))))
    }
}

/// Runs the server until `shutdown` resolves. `on_bound` receives the address actually bound
/// (useful with port 0) before the first request is accepted.
pub async fn serve(
    options: ServeOptions,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let catalog = Arc::new(Catalog::new(&options.engine).map_err(ServeError::Config)?);
    let queue = Queue::new();
    let worker = spawn_worker(catalog.clone(), queue.clone()).map_err(ServeError::Worker)?;

    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| ServeError::Bind { addr: options.listen, source })?;
    let bound = listener.local_addr().map_err(|source| ServeError::Bind { addr: options.listen, source })?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_service_status(SERVICE_NAME, tonic_health::ServingStatus::Serving).await;
    let reflection = |builder: tonic_reflection::server::Builder<'static>| {
        builder
            .register_encoded_file_descriptor_set(rfb_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;

    let auth = BearerAuth::new(options.token.clone());
    let evaluator = EvaluatorServer::with_interceptor(EvaluatorService::new(catalog.clone(), queue.clone()), auth.clone());

    let mut builder = Server::builder();
    if let Some(tls) = &options.tls {
        let identity = Identity::from_pem(&tls.certificate_pem, &tls.key_pem);
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    tracing::info!(
        address = %bound,
        models_dir = %catalog.models_dir().display(),
        cache_dir = %catalog.cache_dir().map(|p| p.display().to_string()).unwrap_or_else(|| "off".into()),
        device = %crate::device_name(catalog.device()),
        tls = options.tls.is_some(),
        token = auth.enabled(),
        "evaluator listening"
    );
    on_bound(bound);
    let result = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(evaluator)
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), shutdown)
        .await;
    queue.shutdown();
    // The worker finishes its current batch's job only at the next progress check; do not
    // wait for a long attack here.
    drop(worker);
    result.map_err(ServeError::from)
}
