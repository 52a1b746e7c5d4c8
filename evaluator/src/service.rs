//! The gRPC server: the `rfb.v1.Evaluator` service, the standard health service (`""` and
//! `rfb.v1.Evaluator`: SERVING while the worker is alive and not stuck), server reflection (v1
//! and v1alpha), optional bearer-token authentication and TLS, HTTP/2 keepalive, and graceful
//! shutdown.
//!
//! A request is validated on the async runtime (blocking parts on the blocking pool) before
//! anything is queued, so a bad or too costly request costs nothing and gets its status at once:
//! every field of every RPC first (INVALID_ARGUMENT naming the field), then the model and data
//! it will touch ([`Catalog::prepare`]),
//! then the cost of the attacks not in the cache against `--max-job-cost`
//! ([`CostEstimate`]), then the room in the queue. A request whose results are all cached is
//! answered without entering the queue.
//!
//! Shutdown (the `shutdown` future of [`serve`] resolves): the health service turns
//! NOT_SERVING, no connection is accepted any more, new calls get UNAVAILABLE, waiting jobs end
//! with UNAVAILABLE, the running job stops within one attack iteration (UNAVAILABLE too) after
//! the cache entry it may be writing is written, and [`serve`] returns once the connections
//! have closed, or after a grace period.
//!
//! Uploads ([`crate::uploads`]) are the one client-streaming call: the service takes the header,
//! then each chunk (writing and hashing on the blocking pool), then imports and publishes the
//! model on the blocking pool. The service decodes messages of up to 4 MiB plus
//! [`MESSAGE_OVERHEAD_BYTES`] (a full chunk with its framing), about tonic's default of 4 MiB,
//! so no other call may send more than before.
//!
//! What clients are told never holds a server path: every error's message goes through the
//! catalog's [`crate::request::PathRedactor`] (models by their names, files relative to the
//! models directory, `<data-dir>`, `<cache-dir>`); the server's log keeps the full paths.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rfb_proto::v1::evaluator_server::{Evaluator, EvaluatorServer};
use rfb_proto::v1::{
    evaluate_event::Event, upload_model_request::Part, DeleteModelRequest, DeleteModelResponse, DescribeModelRequest, Done, EvaluateEvent,
    EvaluateRequest, ListModelsRequest, ListModelsResponse, ModelInfo, ServerInfoRequest, ServerInfoResponse, UploadModelRequest,
};
use tokio_stream::Stream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use crate::auth::{BearerAuth, ClientIdentity, TokenSet};
use crate::catalog::{Catalog, EngineConfig};
use crate::request::{CostEstimate, EngineError, Limits, PathRedactor};
use crate::sandbox::Protection;
use crate::uploads::{upload_prefix, UploadError, UploadLimits, Uploads, MAX_CHUNK_BYTES};
use crate::worker::{Job, Queue, Worker, WorkerState};

/// Fully qualified name of the service, as health checks name it.
pub const SERVICE_NAME: &str = "rfb.v1.Evaluator";

/// What a message may hold beyond an upload's largest chunk (its field tags and lengths).
pub const MESSAGE_OVERHEAD_BYTES: usize = 64 << 10;

/// How long shutdown waits for the running job to stop (and its cache entry to be written),
/// and then again for the connections to close.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

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
#[derive(Clone)]
pub struct TlsFiles {
    pub certificate_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// The private key is never shown.
impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("certificate_pem", &format_args!("{} bytes", self.certificate_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

/// HTTP/2 keepalive: a PING every `interval`; a connection whose peer does not answer within
/// `timeout` is closed, and the jobs of its calls are cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive { interval: Duration::from_secs(30), timeout: Duration::from_secs(20) }
    }
}

/// Everything `evaluator serve` is configured with. Its Debug output shows no secret (tokens
/// are digests shown as a count, the TLS key is redacted).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub engine: EngineConfig,
    /// Accepted bearer tokens; none: no authentication.
    pub tokens: TokenSet,
    pub tls: Option<TlsFiles>,
    pub limits: Limits,
    /// Listen on a non-loopback address without tokens.
    pub insecure: bool,
    pub keepalive: Keepalive,
    /// The worker counts as stuck (health NOT_SERVING) when a job shows no sign of life for
    /// this long.
    pub stuck_after: Duration,
    /// Whether clients may upload models, and how much.
    pub uploads: UploadLimits,
}

impl ServeOptions {
    /// Loopback defaults: no token, no TLS, the default limits.
    pub fn new(listen: SocketAddr, engine: EngineConfig) -> Self {
        ServeOptions {
            listen,
            engine,
            tokens: TokenSet::default(),
            tls: None,
            limits: Limits::default(),
            insecure: false,
            keepalive: Keepalive::default(),
            stuck_after: Duration::from_secs(600),
            uploads: UploadLimits::default(),
        }
    }
}

/// Whether it is safe to listen on `listen`: a loopback address always is; any other needs
/// tokens, or `insecure`. Returns the warning to give, if any (no TLS with a token off
/// loopback: the token travels in clear text).
pub fn check_exposure(listen: SocketAddr, tokens: bool, tls: bool, insecure: bool) -> Result<Option<String>, ServeError> {
    if listen.ip().to_canonical().is_loopback() {
        return Ok(None);
    }
    match (tokens, tls) {
        (false, _) if !insecure => Err(ServeError::Config(format!(
            "refusing to listen on {listen} without authentication: it is not a loopback address, so anyone who can reach it \
             could run jobs on this machine and read its models. Give --token-file (with --tls-cert and --tls-key), or pass \
             --insecure to serve unauthenticated clients anyway"
        ))),
        (false, _) => {
            Ok(Some(format!("listening on {listen} WITHOUT AUTHENTICATION (--insecure): anyone who can reach this address can run jobs")))
        }
        (true, false) => Ok(Some(format!(
            "listening on {listen} with a bearer token but WITHOUT TLS: the token travels in clear text and anyone on the \
             path can read and reuse it; give --tls-cert and --tls-key"
        ))),
        (true, true) => Ok(None),
    }
}

/// The `rfb.v1.Evaluator` implementation.
pub struct EvaluatorService {
    catalog: Arc<Catalog>,
    queue: Arc<Queue>,
    worker: Arc<Worker>,
    uploads: Arc<Uploads>,
    /// How model code runs, for ServerInfo.
    protection: Option<Protection>,
}

impl EvaluatorService {
    pub fn new(catalog: Arc<Catalog>, queue: Arc<Queue>, worker: Arc<Worker>, uploads: Arc<Uploads>) -> Self {
        EvaluatorService { catalog, queue, worker, uploads, protection: None }
    }

    /// Tells ServerInfo how model code runs.
    pub fn with_protection(self, protection: Protection) -> Self {
        EvaluatorService { protection: Some(protection), ..self }
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

/// Who made a call, for the queue's turns: its token when several are configured, else its
/// peer's address (without the port: one machine is one client however many connections it
/// opens).
fn client_of<T>(request: &Request<T>) -> String {
    if let Some(identity) = request.extensions().get::<ClientIdentity>() {
        return identity.queue.clone();
    }
    request.remote_addr().map(|a| a.ip().to_canonical().to_string()).unwrap_or_else(|| "unknown".into())
}

/// Whose uploads a call touches: the token's name (or `token-<hex>`), or `local` on a server
/// without tokens (every caller is then one client).
fn upload_client_of<T>(request: &Request<T>) -> String {
    match request.extensions().get::<ClientIdentity>() {
        Some(identity) => identity.name.clone(),
        None => crate::auth::LOCAL_CLIENT.to_string(),
    }
}

/// Sets its flag when dropped: a handler's way to tell the work it started that it is gone.
struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn blocking<T: Send + 'static>(redactor: &PathRedactor, work: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        tracing::error!(error = %e, "a request handler failed");
        Status::internal(redactor.redact(&format!("request handler failed: {e}")))
    })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<EvaluateEvent, Status>> + Send + 'static>>;

impl EvaluatorService {
    /// The status a refused request gets (logged in full, told without server paths).
    fn refused(&self, error: EngineError) -> Status {
        tracing::info!(code = ?error.code(), error = %error, "request refused");
        self.catalog.redactor().status(&error)
    }

    /// The status a refused upload or deletion gets (logged in full, told without server paths).
    fn upload_refused(&self, error: UploadError) -> Status {
        tracing::info!(code = ?error.code(), error = %error, "upload or deletion refused");
        Status::new(error.code(), self.catalog.redactor().redact(&error.to_string()))
    }
}

#[tonic::async_trait]
impl Evaluator for EvaluatorService {
    async fn list_models(&self, _request: Request<ListModelsRequest>) -> Result<Response<ListModelsResponse>, Status> {
        // ListModelsRequest has no fields.
        let catalog = self.catalog.clone();
        let (models, problems) = blocking(self.catalog.redactor(), move || catalog.list_models()).await?;
        for problem in &problems {
            tracing::warn!(%problem, "listing the models");
        }
        let problems = problems.iter().map(|p| self.catalog.redactor().redact(p)).collect();
        Ok(Response::new(ListModelsResponse { models, problems }))
    }

    async fn describe_model(&self, request: Request<DescribeModelRequest>) -> Result<Response<ModelInfo>, Status> {
        let name = request.into_inner().model;
        crate::request::check_model_name(&name).map_err(|e| self.refused(e))?;
        let catalog = self.catalog.clone();
        let info = blocking(self.catalog.redactor(), move || catalog.describe(&name)).await?.map_err(|e| self.refused(e))?;
        Ok(Response::new(info))
    }

    type EvaluateStream = EventStream;

    /// The header, then the chunks; the logic is [`Uploads`]'. A handler dropped mid-way (the
    /// client went away) drops its [`crate::uploads::Upload`], which removes what it wrote.
    async fn upload_model(&self, request: Request<tonic::Streaming<UploadModelRequest>>) -> Result<Response<ModelInfo>, Status> {
        if self.queue.is_stopping() {
            return Err(self.refused(EngineError::Unavailable("the evaluator is shutting down".into())));
        }
        let client = upload_client_of(&request);
        let deadline = deadline_of(&request);
        // Set when this handler is dropped (the client went away, its deadline passed): the
        // import running on the blocking pool then stops, and nothing is published.
        let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancelled.clone());
        let mut stream = request.into_inner();
        let redactor = self.catalog.redactor();
        let invalid = |message: &str| self.upload_refused(UploadError::InvalidArgument(message.into()));
        let header = match stream.message().await?.and_then(|m| m.part) {
            Some(Part::Header(header)) => header,
            Some(Part::Chunk(_)) => return Err(invalid("the first message must be the UploadHeader, then the chunks")),
            None => return Err(invalid("no UploadHeader: send the header first, then the chunks")),
        };
        let uploads = self.uploads.clone();
        let mut upload = blocking(redactor, move || uploads.begin(&client, &header)).await?.map_err(|e| self.upload_refused(e))?;
        loop {
            let message = stream.message().await.inspect_err(
                |status| tracing::info!(model = upload.model(), code = ?status.code(), "the upload's stream failed; nothing kept"),
            )?;
            match message.map(|m| m.part) {
                None => break,
                Some(Some(Part::Chunk(chunk))) => {
                    upload = blocking(redactor, move || {
                        let mut upload = upload;
                        upload.write(chunk.as_ref()).map(|()| upload)
                    })
                    .await?
                    .map_err(|e| self.upload_refused(e))?;
                }
                Some(Some(Part::Header(_))) => return Err(invalid("a second UploadHeader: one header, then chunks only")),
                Some(None) => return Err(invalid("a message with neither header nor chunk")),
            }
        }
        // One of the permits to import, waiting for it within the call's deadline.
        let imports = self.uploads.imports();
        let permit = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), imports.acquire_owned()).await.map_err(|_| {
                tracing::info!(model = upload.model(), "the upload's deadline passed while it waited to be imported; nothing kept");
                Status::deadline_exceeded(
                    "the deadline passed while the upload waited for its turn to be imported (--max-concurrent-imports); nothing was kept",
                )
            })?,
            None => imports.acquire_owned().await,
        }
        .map_err(|_| self.refused(EngineError::Unavailable("the evaluator is shutting down".into())))?;
        let catalog = self.catalog.clone();
        let stop =
            move || cancelled.load(std::sync::atomic::Ordering::SeqCst) || deadline.is_some_and(|deadline| Instant::now() >= deadline);
        let published = blocking(redactor, move || {
            // Held until the import has really ended, even when this handler is dropped.
            let _permit = permit;
            upload.finish_until(&stop).map(|model| catalog.describe(&model))
        })
        .await?;
        let info = published.map_err(|e| self.upload_refused(e))?.map_err(|e| self.refused(e))?;
        Ok(Response::new(info))
    }

    async fn delete_model(&self, request: Request<DeleteModelRequest>) -> Result<Response<DeleteModelResponse>, Status> {
        if !self.uploads.limits().enabled {
            return Err(self.upload_refused(UploadError::Disabled));
        }
        let client = upload_client_of(&request);
        let model = request.into_inner().model;
        crate::request::check_model_name(&model).map_err(|e| self.refused(e))?;
        let uploads = self.uploads.clone();
        let bytes =
            blocking(self.catalog.redactor(), move || uploads.delete(&client, &model)).await?.map_err(|e| self.upload_refused(e))?;
        Ok(Response::new(DeleteModelResponse { bytes }))
    }

    async fn server_info(&self, request: Request<ServerInfoRequest>) -> Result<Response<ServerInfoResponse>, Status> {
        let limits = self.uploads.limits();
        let when_on = |limit: u64| if limits.enabled { limit } else { 0 };
        Ok(Response::new(ServerInfoResponse {
            versions: Some(crate::versions()),
            device: crate::device_name(self.catalog.device()),
            uploads_enabled: limits.enabled,
            max_upload_bytes: when_on(limits.max_upload_bytes),
            max_uploads_per_client: when_on(limits.max_uploads_per_client),
            max_upload_bytes_per_client: when_on(limits.max_upload_bytes_per_client),
            model_code_protection: self.protection.as_ref().map(|p| p.to_string()).unwrap_or_default(),
            your_upload_prefix: upload_prefix(&upload_client_of(&request)),
        }))
    }

    async fn evaluate(&self, request: Request<EvaluateRequest>) -> Result<Response<Self::EvaluateStream>, Status> {
        let received = Instant::now();
        if self.queue.is_stopping() {
            return Err(self.refused(EngineError::Unavailable("the evaluator is shutting down".into())));
        }
        let deadline = deadline_of(&request);
        let client = client_of(&request);
        let request = request.into_inner();
        let catalog = self.catalog.clone();
        // Validate and prepare, then look the results up in the cache.
        // Every field first, before a file is read.
        crate::request::check_fields(&request).map_err(|e| self.refused(e))?;
        let (prepared, cached) = blocking(self.catalog.redactor(), move || {
            let prepared = catalog.prepare(&request)?;
            let cached = catalog.cached_results(&prepared);
            Ok::<_, EngineError>((prepared, cached))
        })
        .await?
        .map_err(|e| self.refused(e))?;
        if cached.iter().all(Option::is_some) {
            tracing::info!(model = %prepared.model, attacks = cached.len(), %client, "answered from the cache");
            let mut events: Vec<Result<EvaluateEvent, Status>> =
                cached.into_iter().flatten().map(|r| Ok(EvaluateEvent { event: Some(Event::Result(r)) })).collect();
            events.push(Ok(EvaluateEvent { event: Some(Event::Done(Done { elapsed_seconds: received.elapsed().as_secs_f64() })) }));
            return Ok(Response::new(Box::pin(tokio_stream::iter(events))));
        }
        // What is left to compute must fit the budget.
        let to_compute = prepared.attacks.iter().zip(&cached).filter(|(_, c)| c.is_none()).map(|(a, _)| a);
        let cost = CostEstimate::of(&prepared, to_compute);
        cost.check(self.queue.limits().max_job_cost).map_err(|e| self.refused(e))?;
        if self.worker.is_finished() {
            return Err(self.refused(EngineError::Unavailable("the evaluator's worker is not running".into())));
        }
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        tracing::debug!(model = %prepared.model, cost = cost.total, "job admitted");
        self.queue.submit(Job::new(prepared, sender, deadline, client)).map_err(|e| self.refused(e))?;
        Ok(Response::new(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(receiver))))
    }
}

/// Keeps the health service truthful: SERVING while the worker is idle or busy and showing
/// signs of life, NOT_SERVING when it is stuck or gone, or the server is shutting down.
async fn watch_health(reporter: tonic_health::server::HealthReporter, worker: Arc<Worker>, queue: Arc<Queue>, stuck_after: Duration) {
    let mut last: Option<bool> = None;
    loop {
        let state = worker.state(stuck_after);
        let serving = state.serving() && !queue.is_stopping();
        if last != Some(serving) {
            let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(SERVICE_NAME, status).await;
            match state {
                WorkerState::Stuck(silent) => {
                    tracing::error!(silent_seconds = silent.as_secs(), "the worker shows no sign of life; health NOT_SERVING")
                }
                WorkerState::Gone if !queue.is_stopping() => tracing::error!("the worker is gone; health NOT_SERVING"),
                _ if last.is_some() => tracing::info!(serving, "health changed"),
                _ => {}
            }
            last = Some(serving);
        }
        if queue.is_stopping() && !serving {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs the server until `shutdown` resolves, then shuts down gracefully (see the module
/// docs). `on_bound` receives the address actually bound (useful with port 0) before the first
/// request is accepted.
pub async fn serve(
    options: ServeOptions,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let exposure = check_exposure(options.listen, !options.tokens.is_empty(), options.tls.is_some(), options.insecure)?;
    let limits = options.limits;
    if limits.max_queue == 0 || limits.max_queue_per_client == 0 || limits.max_job_cost == 0 {
        return Err(ServeError::Config("--max-queue, --max-queue-per-client and --max-job-cost must be positive".into()));
    }
    if options.keepalive.interval.is_zero() || options.keepalive.timeout.is_zero() {
        return Err(ServeError::Config("the keepalive interval and timeout must be positive".into()));
    }
    let catalog = Arc::new(Catalog::new(&options.engine).map_err(ServeError::Config)?);
    let queue = Queue::new(limits);
    // What this machine can do for model code: a worker process confines itself and reports.
    let sandbox = options.engine.sandbox.clone();
    let device = options.engine.device;
    let protection = tokio::task::spawn_blocking(move || crate::model_process::probe(&sandbox, device))
        .await
        .map_err(|e| ServeError::Config(format!("probing the sandbox of model code failed: {e}")))?
        .map_err(|e| ServeError::Config(format!("cannot run model code in worker processes: {e}")))?;
    tracing::info!(model_code_protection = %protection, "model code runs in: {protection}");
    let uploads = Arc::new(
        Uploads::open(catalog.models_dir(), catalog.data_dir(), options.uploads, options.engine.sandbox.clone(), Some(protection.clone()))
            .map_err(|e| ServeError::Config(format!("uploads: {e}")))?,
    );
    let worker =
        Worker::spawn(catalog.clone(), queue.clone(), options.engine.sandbox.clone(), protection.clone()).map_err(ServeError::Worker)?;

    let listener =
        tokio::net::TcpListener::bind(options.listen).await.map_err(|source| ServeError::Bind { addr: options.listen, source })?;
    let bound = listener.local_addr().map_err(|source| ServeError::Bind { addr: options.listen, source })?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_service_status(SERVICE_NAME, ServingStatus::Serving).await;
    let reflection = |builder: tonic_reflection::server::Builder<'static>| {
        builder
            .register_encoded_file_descriptor_set(rfb_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 =
        reflection(tonic_reflection::server::Builder::configure()).build_v1().map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha =
        reflection(tonic_reflection::server::Builder::configure()).build_v1alpha().map_err(|e| ServeError::Reflection(e.to_string()))?;

    let auth = BearerAuth::with_tokens(options.tokens.clone());
    let evaluator = tonic::service::interceptor::InterceptedService::new(
        EvaluatorServer::new(EvaluatorService::new(catalog.clone(), queue.clone(), worker.clone(), uploads).with_protection(protection))
            .max_decoding_message_size(MAX_CHUNK_BYTES + MESSAGE_OVERHEAD_BYTES),
        auth.clone(),
    );

    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(options.keepalive.interval))
        .http2_keepalive_timeout(Some(options.keepalive.timeout));
    if let Some(tls) = &options.tls {
        let identity = Identity::from_pem(&tls.certificate_pem, &tls.key_pem);
        builder = builder.tls_config(ServerTlsConfig::new().identity(identity)).map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    if let Some(warning) = &exposure {
        tracing::warn!("WARNING: {warning}");
    }
    tracing::info!(
        address = %bound,
        models_dir = %catalog.models_dir().display(),
        cache_dir = %catalog.cache_dir().map(|p| p.display().to_string()).unwrap_or_else(|| "off".into()),
        device = %crate::device_name(catalog.device()),
        tls = options.tls.is_some(),
        tokens = options.tokens.len(),
        max_job_cost = limits.max_job_cost,
        max_queue = limits.max_queue,
        max_queue_per_client = limits.max_queue_per_client,
        uploads = options.uploads.enabled,
        "evaluator listening"
    );
    tokio::spawn(watch_health(health_reporter.clone(), worker.clone(), queue.clone(), options.stuck_after));
    on_bound(bound);

    let began = Arc::new(tokio::sync::Notify::new());
    let stop_jobs = {
        let (queue, worker, began, reporter) = (queue.clone(), worker.clone(), began.clone(), health_reporter.clone());
        async move {
            shutdown.await;
            began.notify_one();
            tracing::info!("shutting down: no new connections or jobs; waiting jobs end with UNAVAILABLE, the running one is stopped");
            reporter.set_service_status("", ServingStatus::NotServing).await;
            reporter.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
            queue.shutdown();
            // The worker stops within one attack iteration, after writing any cache entry.
            let waited = Instant::now();
            while !worker.is_finished() && waited.elapsed() < SHUTDOWN_GRACE {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if worker.is_finished() {
                tracing::info!(seconds = waited.elapsed().as_secs_f64(), "worker stopped; cache written");
            } else {
                tracing::warn!("the worker did not stop within {SHUTDOWN_GRACE:?} (a long operation); exiting without it");
            }
        }
    };
    let server = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(evaluator)
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), stop_jobs);
    let result = tokio::select! {
        result = server => result.map_err(ServeError::from),
        _ = async {
            began.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE + Duration::from_secs(2)).await;
        } => {
            tracing::warn!("connections still open {:?} after the shutdown began; closing them", SHUTDOWN_GRACE + Duration::from_secs(2));
            Ok(())
        }
    };
    queue.shutdown();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_open_by_default() {
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        for loopback in ["127.0.0.1:1", "[::1]:1", "[::ffff:127.0.0.1]:1"] {
            assert!(check_exposure(at(loopback), false, false, false).unwrap().is_none(), "{loopback}");
        }
        for open in ["0.0.0.0:1", "192.168.1.2:1", "[::]:1"] {
            let refused = check_exposure(at(open), false, false, false).unwrap_err();
            assert!(refused.to_string().contains("--insecure"), "{refused}");
            assert!(check_exposure(at(open), false, false, true).unwrap().unwrap().contains("WITHOUT AUTHENTICATION"));
            assert!(check_exposure(at(open), true, false, false).unwrap().unwrap().contains("WITHOUT TLS"));
            assert!(check_exposure(at(open), true, true, false).unwrap().is_none());
        }
    }

    /// The configuration as Debug prints it (a log line, a panic message) holds no token and
    /// no private key.
    #[test]
    fn debug_output_of_the_configuration_shows_no_secret() {
        let token = "s3cret-bearer-token";
        let key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n";
        let options = ServeOptions {
            tokens: TokenSet::new([token, "second-s3cret"]),
            tls: Some(TlsFiles { certificate_pem: b"certificate".to_vec(), key_pem: key.as_bytes().to_vec() }),
            ..ServeOptions::new("127.0.0.1:1".parse().unwrap(), EngineConfig::new("/models"))
        };
        for shown in [format!("{options:?}"), format!("{options:#?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(!shown.contains("PRIVATE KEY") && !shown.contains("MIIEvQ"), "{shown}");
            // Nor as the numbers a derived Debug of the key's bytes prints ("-----" is 45 x 5).
            assert!(!shown.contains("45, 45, 45, 45, 45"), "{shown}");
            assert!(shown.contains("tokens: 2") && shown.contains("<redacted>"), "{shown}");
        }
    }
}
