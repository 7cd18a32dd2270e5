//! The Flight SQL service: every RPC authenticated, every query through [`FlightSqlServer::run`].
//!
//! A Basic handshake yields a bearer token bound to a session built by
//! `SessionFactory::session_for` (so `SET` lasts for the token's life). With an identity
//! provider (`ServiceOptions::oidc`), its JWT is a bearer token too, with no handshake: the
//! first call checks it and builds its session, kept under the token until its `exp`.
//! Statement tickets are opaque: a random handle that only the login which
//! planned the statement can redeem (its session maps it to the SQL; the last
//! [`STATEMENTS_KEPT`] are kept), so a ticket names one run, which `CancelQuery`
//! stops without touching an identical statement, and is worthless to anyone
//! else. Prepared statements live in the token's session until closed. Results stream batch by batch as DataFusion
//! produces them, under a per-query timeout; a client that goes away drops
//! the stream, which stops the query, and `CancelQuery` stops a running one.

use std::collections::HashMap;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionCancelQueryRequest, ActionCancelQueryResult, ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any, CommandGetCatalogs,
    CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementQuery, CommandStatementUpdate,
    DoPutPreparedStatementResult, Nullable, ProstMessageExt, Searchable, SqlInfo, TicketStatementQuery, XdbcDataType,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use base64::Engine as _;
use datafusion::common::ParamValues;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{LogicalPlan, Statement};
use datafusion::prelude::SessionContext;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use proxima_audit::{AuditLog, Decision, Phase, Record};
use proxima_engine::login::{LoginGuard, LoginLimits, LoginRefused};
use proxima_engine::oidc::{self, OidcRefusal, OidcVerifier};
use proxima_engine::telemetry::{QueryOutcome, ServiceMetrics};
use proxima_engine::{Principal, SessionFactory};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use proxima_engine::Users;

type FlightDataStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// How long a bearer token stays valid.
    pub token_ttl: Duration,
    /// How long one query may run before it is stopped.
    pub query_timeout: Duration,
    /// Every password login goes through this (shared with the REST service).
    pub logins: Arc<LoginGuard>,
    /// Where queries and calls are counted (the operations port renders them).
    pub metrics: ServiceMetrics,
    /// The identity provider whose bearer tokens stand for staff, if any.
    pub oidc: Option<OidcVerifier>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(3600),
            query_timeout: Duration::from_secs(600),
            logins: Arc::new(LoginGuard::new(LoginLimits::default())),
            metrics: ServiceMetrics::default(),
            oidc: None,
        }
    }
}

/// One logged-in token: its user, its session and its prepared statements.
struct TokenSession {
    principal: Principal,
    /// Names the login in audit records (the token itself is never written anywhere).
    id: String,
    ctx: SessionContext,
    expires: Instant,
    /// The stamp of the user's entry at login ([`Users::stamp`]): the login stands only while
    /// the users file keeps that entry (not removed, same role and password). `None` for an
    /// identity provider's token, which stands until its `exp`.
    stamp: Option<u64>,
    /// The statements this login planned, by ticket handle, oldest first; `None` for a
    /// `SET`, which took effect when it was planned (its ticket reads no rows).
    statements: Mutex<std::collections::VecDeque<(Vec<u8>, Option<String>)>>,
    prepared: Mutex<HashMap<String, Prepared>>,
    /// The tables and functions each SQL `PREPARE`d statement reads, by name: what the audit
    /// record of its `EXECUTE` names.
    statement_objects: Mutex<HashMap<String, Vec<String>>>,
}

/// Running queries: setting the flag stops the stream.
type Running = HashMap<RunKey, tokio::sync::watch::Sender<bool>>;

/// One run of a query: its login, its ticket, and a number of its own (a prepared
/// statement's ticket may run twice at once).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RunKey {
    login: String,
    ticket: Vec<u8>,
    run: u64,
}

/// Numbers the runs of queries.
static RUNS: AtomicU64 = AtomicU64::new(0);

/// A prepared statement: its SQL and the parameter rows bound to it.
#[derive(Clone)]
struct Prepared {
    sql: String,
    parameters: Vec<RecordBatch>,
}

/// Proxima's Flight SQL service.
pub struct FlightSqlServer {
    factory: SessionFactory,
    users: Users,
    audit: AuditLog,
    options: ServiceOptions,
    tokens: Arc<Mutex<HashMap<String, Arc<TokenSession>>>>,
    /// Running queries by ticket, for `CancelQuery`: setting the flag stops the stream.
    running: Arc<Mutex<Running>>,
    sql_info: SqlInfoData,
    xdbc_info: XdbcTypeInfoData,
}

impl std::fmt::Debug for FlightSqlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightSqlServer")
            .field("users", &self.users.len())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// A query error as the client sees it: planning and user mistakes are `InvalidArgument`,
/// resource limits `ResourceExhausted`, everything else `Internal`.
fn query_status(e: DataFusionError) -> Status {
    match e.find_root() {
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(e.to_string()),
        DataFusionError::SQL(..) | DataFusionError::Plan(_) | DataFusionError::SchemaError(..) => {
            Status::invalid_argument(e.to_string())
        }
        DataFusionError::Execution(_) | DataFusionError::NotImplemented(_) => Status::invalid_argument(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// How a query that ended with `status` is counted.
fn outcome_of(status: &Status) -> QueryOutcome {
    match status.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => QueryOutcome::Denied,
        tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::FailedPrecondition => QueryOutcome::Invalid,
        tonic::Code::ResourceExhausted => QueryOutcome::Exhausted,
        tonic::Code::Cancelled => QueryOutcome::Cancelled,
        tonic::Code::DeadlineExceeded => QueryOutcome::Timeout,
        _ => QueryOutcome::Error,
    }
}

fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(internal)?;
    Ok(bytes)
}

impl FlightSqlServer {
    /// A service over `factory`'s store for `users`, recording every access in `audit`.
    pub fn new(
        factory: SessionFactory,
        users: Users,
        audit: AuditLog,
        options: ServiceOptions,
    ) -> Result<Self, Status> {
        let tokens = Arc::new(Mutex::new(HashMap::new()));
        let running = Arc::new(Mutex::new(HashMap::new()));
        // Each reload of the users file ends the logins it removed or changed at once
        // (the next call of such a login would find out anyway, but its running queries
        // would go on).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(end_stale_logins(
                users.clone(),
                Arc::downgrade(&tokens),
                Arc::downgrade(&running),
            ));
        }
        Ok(Self {
            factory,
            users,
            audit,
            options,
            tokens,
            running,
            sql_info: sql_info().map_err(internal)?,
            xdbc_info: xdbc_info().map_err(internal)?,
        })
    }

    /// Where the service counts its calls and queries.
    pub fn metrics(&self) -> &ServiceMetrics {
        &self.options.metrics
    }

    /// The token session of a request's `authorization: Bearer …` header; a login whose
    /// user was removed, or given another role or password, since ends here, its running
    /// queries cancelled.
    async fn session<T>(&self, request: &Request<T>) -> Result<Arc<TokenSession>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("no credentials: log in with a Basic handshake first"))?
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| Status::unauthenticated("expected 'authorization: Bearer <token>'"))?;
        // An identity provider's token holding several roles has a session per role its
        // calls name (`x-proxima-role`), so a call always acts as the role it names.
        let role = request.metadata().get(oidc::ROLE_HEADER).and_then(|v| v.to_str().ok());
        let provider_token = self.options.oidc.is_some() && oidc::looks_like_jwt(token);
        let key = match role {
            Some(role) if provider_token => format!("{token}\n{role}"),
            _ => token.to_string(),
        };
        let found = {
            let mut tokens = self.tokens.lock().map_err(internal)?;
            match tokens.get(&key) {
                Some(session) if !session.stands(&self.users) => {
                    let session = tokens.remove(&key).expect("just found");
                    drop(tokens);
                    end_login(
                        &session,
                        &self.running,
                        "the user was removed, or their role or password changed",
                    );
                    return Err(Status::unauthenticated(
                        "this login has ended: the user was removed, or their role or password changed; log in again",
                    ));
                }
                Some(session) if session.expires > Instant::now() => Some(Arc::clone(session)),
                Some(_) => {
                    let session = tokens.remove(&key).expect("just found");
                    drop(tokens);
                    end_login(&session, &self.running, "its time ran out");
                    // A provider's token may outlast its session (at most `token_ttl`):
                    // checked again below, it starts a new one if it still stands.
                    if !provider_token {
                        return Err(Status::unauthenticated("the token has expired: log in again"));
                    }
                    None
                }
                None => None,
            }
        };
        match (found, &self.options.oidc) {
            (Some(session), _) => Ok(session),
            (None, Some(verifier)) if provider_token => self.oidc_login(verifier, token, key, request).await,
            (None, _) => Err(Status::unauthenticated("unknown token: log in again")),
        }
    }

    /// The first call with an identity provider's token (and role): checks it (see
    /// `proxima_engine::oidc`) and, if it stands, builds its session, kept under `key` until
    /// the token's `exp` (at most `token_ttl`; then its next call checks it again). A
    /// subject keeps at most [`MAX_PROVIDER_SESSIONS`]: a new one ends its oldest. Accepted
    /// and refused alike are audit records.
    async fn oidc_login<T>(
        &self,
        verifier: &OidcVerifier,
        token: &str,
        key: String,
        request: &Request<T>,
    ) -> Result<Arc<TokenSession>, Status> {
        let address = request.remote_addr();
        let record = |principal: &str, role: &str, decision: Decision, rule: &str| {
            let mut record = Record::new(Phase::Decision, principal, role, "flight:BearerLogin", decision, rule);
            record.client = address.map(|a| a.to_string());
            record
        };
        let wanted = match request.metadata().get(oidc::ROLE_HEADER).map(|v| v.to_str()) {
            None => None,
            Some(Ok(wanted)) => Some(wanted),
            Some(Err(_)) => return Err(Status::invalid_argument("the x-proxima-role header is not text")),
        };
        let signed_in = verifier
            .sign_in(token, wanted, &self.options.logins, address.map(|a| a.ip()))
            .await;
        let (login, principal) = match signed_in {
            Ok(signed_in) => signed_in,
            Err(refusal) => {
                warn!(target: "proxima::auth", client = ?address, %refusal, "bearer token refused");
                let mut denied = record("", "", Decision::Deny, refusal.rule());
                denied.error = Some(refusal.to_string());
                self.audit(denied).await?;
                return Err(match refusal {
                    OidcRefusal::Role(_) | OidcRefusal::NoRole(_) => Status::permission_denied(refusal.to_string()),
                    OidcRefusal::KeysUnavailable(_) => Status::unavailable(refusal.to_string()),
                    OidcRefusal::Throttled(_) => Status::resource_exhausted(refusal.to_string()),
                    _ => Status::unauthenticated(refusal.to_string()),
                });
            }
        };
        if !principal.role.may_query() {
            let mut denied = record(
                &principal.name,
                principal.role.name(),
                Decision::Deny,
                "role without SQL",
            );
            denied.issuer = principal.issuer.clone();
            denied.error = Some("the role has no SQL access".into());
            self.audit(denied).await?;
            return Err(Status::permission_denied(format!(
                "role {} has no SQL access: it uses its REST routes",
                principal.role
            )));
        }
        let ctx = self.factory.session_for(&principal).await.map_err(internal)?;
        let id = uuid::Uuid::new_v4().to_string();
        let mut allowed = record(&principal.name, principal.role.name(), Decision::Allow, "oidc");
        allowed.issuer = principal.issuer.clone();
        allowed.session = Some(id.clone());
        // The login exists only once it is recorded.
        self.audit(allowed).await?;
        info!(target: "proxima::auth", user = %principal.name, display = ?login.display, role = %principal.role,
            issuer = %login.issuer, "logged in with the identity provider's token");
        let session = Arc::new(TokenSession {
            principal,
            id,
            ctx,
            expires: Instant::now() + login.remaining().min(self.options.token_ttl),
            stamp: None,
            statements: Mutex::new(std::collections::VecDeque::new()),
            prepared: Mutex::new(HashMap::new()),
            statement_objects: Mutex::new(HashMap::new()),
        });
        let (session, ended) = {
            let mut tokens = self.tokens.lock().map_err(internal)?;
            let now = Instant::now();
            tokens.retain(|_, s| s.expires > now);
            // A subject's sessions beyond the most kept, oldest (soonest to expire) first.
            let mut theirs: Vec<(Instant, String)> = tokens
                .iter()
                .filter(|(_, s)| s.principal.name == session.principal.name && s.principal.issuer.is_some())
                .map(|(key, s)| (s.expires, key.clone()))
                .collect();
            theirs.sort();
            let excess = (theirs.len() + 1).saturating_sub(MAX_PROVIDER_SESSIONS);
            let ended: Vec<Arc<TokenSession>> = theirs
                .iter()
                .take(excess)
                .filter_map(|(_, key)| tokens.remove(key))
                .collect();
            // Two first calls at once: both are recorded, the first session is kept.
            (Arc::clone(tokens.entry(key).or_insert(session)), ended)
        };
        for old in &ended {
            end_login(old, &self.running, "the subject started more sessions than are kept");
        }
        Ok(session)
    }

    /// The session and address of an authenticated request. A purpose sent as the
    /// `x-proxima-purpose` header is declared for the login, as `SET proxima.purpose` would.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let session = self.session(request).await?;
        if let Some(purpose) = request.metadata().get(PURPOSE_HEADER) {
            let purpose = purpose
                .to_str()
                .map_err(|_| Status::invalid_argument("the x-proxima-purpose header is not text"))?;
            let purpose = proxima_udfs::options::parse_purpose(purpose)
                .map_err(|e| Status::invalid_argument(e.strip_backtrace()))?;
            let state = session.ctx.state_ref();
            let mut state = state.write();
            let options = state.config_mut().options_mut();
            options
                .set("proxima.purpose", &purpose)
                .map_err(|e| Status::invalid_argument(e.strip_backtrace()))?;
        }
        Ok(Caller {
            session,
            client: request.remote_addr().map(|a| a.to_string()),
        })
    }

    /// Makes `record` durable; if it cannot be, the request is refused.
    async fn audit(&self, record: Record) -> Result<u64, Status> {
        self.audit
            .append(record)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    /// Records that `action` was refused with `status` before anything ran, and returns
    /// the status to send (or the audit's own error, if even that cannot be written).
    async fn refused(&self, caller: &Caller, action: &str, sql: Option<&str>, status: Status) -> Status {
        let rule = match status.code() {
            tonic::Code::PermissionDenied => "statement or setting not allowed for the role",
            _ => "refused at planning",
        };
        let mut record = caller.record(Phase::Decision, action, Decision::Deny, rule);
        if let Some(sql) = sql {
            record = record.with_sql(sql);
        }
        record.error = Some(status.message().to_string());
        match self.audit(record).await {
            Ok(_) => status,
            Err(audit) => audit,
        }
    }

    /// Logs a query that ended, and counts it.
    fn log_query(
        &self,
        principal: &Principal,
        sql: &str,
        rows: u64,
        started: Instant,
        outcome: QueryOutcome,
        detail: &str,
    ) {
        log_query(&self.options.metrics, principal, sql, rows, started, outcome, detail);
    }

    /// A statement refused before it ran: logged and counted as a query, and audited as a
    /// refusal.
    async fn refused_query(
        &self,
        caller: &Caller,
        action: &str,
        sql: &str,
        started: Instant,
        status: Status,
    ) -> Status {
        let outcome = outcome_of(&status);
        self.log_query(&caller.session.principal, sql, 0, started, outcome, status.message());
        self.refused(caller, action, Some(sql), status).await
    }

    /// Writes the intent of a metadata call; the returned outcome is finished by [`Self::end`].
    async fn begin(&self, caller: &Caller, action: &str) -> Result<Outcome, Status> {
        let intent = caller.record(Phase::Intent, action, Decision::Allow, "the session's own catalog");
        let seq = self.audit(intent.clone()).await?;
        Ok(Outcome {
            done: intent.done(seq),
            started: Instant::now(),
        })
    }

    /// Records how a metadata call ended and answers it.
    fn end(&self, outcome: Outcome, batch: Result<RecordBatch, Status>) -> Result<Response<FlightDataStream>, Status> {
        let Outcome { mut done, started } = outcome;
        done.duration_ms = Some(started.elapsed().as_millis() as u64);
        match &batch {
            Ok(batch) => {
                done.rows = Some(batch.num_rows() as u64);
                done.bytes = Some(batch.get_array_memory_size() as u64);
            }
            Err(status) => done.error = Some(status.message().to_string()),
        }
        self.audit.submit(done);
        Ok(self.batch_response(batch?))
    }

    /// The logical plan of `sql`, checked against the user's statement permissions, the
    /// role's access rule and the settings it may change. Nothing runs: DDL and `SET` take
    /// effect only in [`Self::run`].
    async fn logical_plan(&self, session: &TokenSession, sql: &str) -> Result<LogicalPlan, Status> {
        // One snapshot of the session's state for planning and every check.
        let state = session.ctx.state();
        let plan = state.create_logical_plan(sql).await.map_err(query_status)?;
        session
            .principal
            .check_statement(&plan)
            .map_err(Status::permission_denied)?;
        // The role's access rule, before anything runs (EXPLAIN and PREPARE included).
        proxima_engine::policy::check_plan(&state, &plan).map_err(query_status)?;
        let current = state
            .config()
            .options()
            .extensions
            .get::<proxima_udfs::ProximaOptions>()
            .cloned()
            .unwrap_or_default();
        session
            .principal
            .check_settings(&plan, &current, self.factory.options().max_trace_window)
            .map_err(Status::permission_denied)?;
        Ok(plan)
    }

    /// Runs `sql` (with each parameter row in turn, if any) and streams the result: every
    /// query of the service passes here. Each parameter row is planned and checked first;
    /// then the intent (statement, parameters, objects) is made durable, and only then does
    /// anything run (a `SET` or DDL takes effect at that point, too). The outcome is
    /// recorded when the stream ends, however it ends.
    async fn run(
        &self,
        caller: Caller,
        action: &str,
        sql: String,
        parameters: Vec<RecordBatch>,
        ticket: Vec<u8>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let started = Instant::now();
        let session = Arc::clone(&caller.session);
        let rows_of_parameters = match parameter_rows(&parameters) {
            Ok(rows) => rows,
            Err(status) => {
                return Err(self.refused_query(&caller, action, &sql, started, status).await);
            }
        };
        let mut plans = Vec::new();
        for values in &rows_of_parameters {
            let mut plan = self.logical_plan(&session, &sql).await;
            if let (Ok(unbound), Some(values)) = (&plan, values) {
                plan = unbound
                    .clone()
                    .with_param_values(ParamValues::List(values.iter().cloned().map(Into::into).collect()))
                    .map_err(query_status);
            }
            match plan {
                Ok(plan) => plans.push(plan),
                Err(status) => {
                    return Err(self.refused_query(&caller, action, &sql, started, status).await);
                }
            }
        }
        let mut intent = caller
            .record(
                Phase::Intent,
                action,
                Decision::Allow,
                "statement kind allowed for the role",
            )
            .with_sql(&sql);
        intent.params = rows_of_parameters
            .iter()
            .flatten()
            .map(|row| row.iter().map(ToString::to_string).collect())
            .collect();
        intent.objects = proxima_engine::access::objects_read(&plans);
        // An EXECUTE reads what its PREPARE did.
        for plan in &plans {
            if let LogicalPlan::Statement(Statement::Execute(execute)) = plan
                && let Some(objects) = session.statement_objects.lock().map_err(internal)?.get(&execute.name)
            {
                intent.objects.extend(objects.iter().cloned());
            }
        }
        intent.objects.sort();
        intent.objects.dedup();
        let seq = self.audit(intent.clone()).await?;
        let mut done = Some(intent.done(seq));
        let finish = |done: &mut Option<Record>, status: &Status| {
            self.log_query(
                &session.principal,
                &sql,
                0,
                started,
                outcome_of(status),
                status.message(),
            );
            if let Some(mut done) = done.take() {
                done.rows = Some(0);
                done.duration_ms = Some(started.elapsed().as_millis() as u64);
                done.error = Some(status.message().to_string());
                self.audit.submit(done);
            }
        };
        let mut frames = Vec::new();
        for plan in plans {
            // A tracer's purpose must name an open case at the SET, not at the next read;
            // checking reads the case, so only once the intent is durable.
            if let Some(purpose) = declared_purpose(&session.principal, &plan)
                && let Err(e) = proxima_engine::purpose::check_declared(&session.ctx.state(), purpose).await
            {
                let status = query_status(e);
                finish(&mut done, &status);
                return Err(status);
            }
            let named = match &plan {
                LogicalPlan::Statement(Statement::Prepare(prepare)) => Some((
                    prepare.name.clone(),
                    Some(proxima_engine::access::objects_read(std::slice::from_ref(&plan))),
                )),
                LogicalPlan::Statement(Statement::Deallocate(deallocate)) => Some((deallocate.name.clone(), None)),
                _ => None,
            };
            match session.ctx.execute_logical_plan(plan).await {
                Ok(df) => {
                    if let Some((name, objects)) = named {
                        let mut statements = session.statement_objects.lock().map_err(internal)?;
                        match objects {
                            Some(objects) => statements.insert(name, objects),
                            None => statements.remove(&name),
                        };
                    }
                    frames.push(df)
                }
                Err(e) => {
                    let status = query_status(e);
                    finish(&mut done, &status);
                    return Err(status);
                }
            }
        }
        let schema: SchemaRef = match frames.first() {
            Some(df) => Arc::new(df.schema().as_arrow().clone()),
            None => Arc::new(Schema::empty()),
        };
        let mut streams: Vec<SendableRecordBatchStream> = Vec::new();
        for df in frames {
            match df.execute_stream().await {
                Ok(stream) => streams.push(stream),
                Err(e) => {
                    let status = query_status(e);
                    finish(&mut done, &status);
                    return Err(status);
                }
            }
        }
        let batches = futures::stream::iter(streams).flatten();
        let (cancel, cancelled) = tokio::sync::watch::channel(false);
        // Keyed by login too: a prepared statement's ticket is its handle, which names it only
        // within the login; and by run, since one prepared ticket may run twice at once.
        let ticket = RunKey {
            login: session.id.clone(),
            ticket,
            run: RUNS.fetch_add(1, Ordering::Relaxed),
        };
        {
            let mut running = self.running.lock().map_err(internal)?;
            // A login ended while this was planned (after its check, before this entry)
            // would miss the cancellation: it is stopped here instead.
            if !session.stands(&self.users) {
                let _ = cancel.send(true);
            }
            running.insert(ticket.clone(), cancel);
        }
        let bytes = Arc::new(AtomicU64::new(0));
        let logged = LoggedStream {
            inner: Box::pin(batches),
            deadline: Box::pin(tokio::time::sleep(self.options.query_timeout)),
            cancelled: Box::pin(async move {
                let mut cancelled = cancelled;
                // An error means the registry entry is gone: then nobody can cancel any more.
                if cancelled.wait_for(|c| *c).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }),
            registry: Arc::clone(&self.running),
            ticket,
            principal: session.principal.clone(),
            sql: sql.clone(),
            started,
            rows: 0,
            timeout: self.options.query_timeout,
            outcome: None,
            audit: self.audit.clone(),
            metrics: self.options.metrics.clone(),
            span: tracing::Span::current(),
            done: done.take(),
            bytes: Arc::clone(&bytes),
        };
        let flight = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(logged)
            .inspect(move |data| {
                if let Ok(data) = data {
                    bytes.fetch_add(
                        (data.data_header.len() + data.data_body.len()) as u64,
                        Ordering::Relaxed,
                    );
                }
            })
            .map_err(|e| match e {
                FlightError::Tonic(status) => *status,
                FlightError::ExternalError(e) => match e.downcast::<DataFusionError>() {
                    Ok(e) => query_status(*e),
                    Err(e) => Status::internal(e.to_string()),
                },
                other => Status::internal(other.to_string()),
            });
        Ok(Response::new(Box::pin(flight)))
    }

    /// Plans `sql` without running it, for a call that answers with its schemas only
    /// (`GetFlightInfo`, `CreatePreparedStatement`): which still reveals what exists, so it
    /// is recorded, as a decision, refused or not.
    /// A statement refused here is counted as a query; one planned is counted when it runs.
    async fn plan_only(&self, caller: &Caller, action: &str, sql: &str) -> Result<LogicalPlan, Status> {
        let started = Instant::now();
        let plan = match self.logical_plan(&caller.session, sql).await {
            Ok(plan) => plan,
            Err(status) => return Err(self.refused_query(caller, action, sql, started, status).await),
        };
        let mut record = caller
            .record(
                Phase::Decision,
                action,
                Decision::Allow,
                "planned only: schemas answered",
            )
            .with_sql(sql);
        record.objects = proxima_engine::access::objects_read(std::slice::from_ref(&plan));
        self.audit(record).await?;
        Ok(plan)
    }

    fn flight_info(
        &self,
        schema: &Schema,
        ticket: Vec<u8>,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
        Ok(FlightInfo::new()
            .try_with_schema(schema)
            .map_err(internal)?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor))
    }

    /// The FlightInfo of a metadata command (authenticated; the ticket is the command itself).
    async fn command_info(
        &self,
        request: Request<FlightDescriptor>,
        schema: &Schema,
        ticket: Vec<u8>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.session(&request).await?;
        let info = self.flight_info(schema, ticket, request.into_inner())?;
        Ok(Response::new(info))
    }

    fn batch_response(&self, batch: RecordBatch) -> Response<FlightDataStream> {
        let schema = batch.schema();
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::once(async move { Ok(batch) }))
            .map_err(|e| Status::internal(e.to_string()));
        Response::new(Box::pin(stream))
    }

    async fn tables_batch(&self, session: &TokenSession, query: CommandGetTables) -> Result<RecordBatch, Status> {
        let include_schema = query.include_schema;
        let mut builder = query.into_builder();
        let state = session.ctx.state();
        let catalogs = state.catalog_list();
        for catalog_name in catalogs.catalog_names() {
            let Some(catalog) = catalogs.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                for table_name in schema.table_names() {
                    let provider = schema.table(&table_name).await.map_err(query_status)?;
                    let Some(provider) = provider else { continue };
                    let table_type = match provider.table_type() {
                        datafusion::logical_expr::TableType::Base => "TABLE",
                        datafusion::logical_expr::TableType::View => "VIEW",
                        datafusion::logical_expr::TableType::Temporary => "LOCAL TEMPORARY",
                    };
                    let table_schema = if include_schema {
                        provider.schema()
                    } else {
                        Arc::new(Schema::empty())
                    };
                    builder
                        .append(&catalog_name, &schema_name, &table_name, table_type, &table_schema)
                        .map_err(internal)?;
                }
            }
        }
        builder.build().map_err(internal)
    }
}

/// The parameter rows of bound batches, each as a list of values; one `None` when nothing is bound.
fn parameter_rows(parameters: &[RecordBatch]) -> Result<Vec<Option<Vec<ScalarValue>>>, Status> {
    let mut rows = Vec::new();
    for batch in parameters {
        for row in 0..batch.num_rows() {
            let values = batch
                .columns()
                .iter()
                .map(|column| ScalarValue::try_from_array(column, row))
                .collect::<Result<Vec<_>, _>>()
                .map_err(query_status)?;
            rows.push(Some(values));
        }
    }
    if rows.is_empty() {
        rows.push(None);
    }
    Ok(rows)
}

/// Logs a query that ended, and counts it.
fn log_query(
    metrics: &ServiceMetrics,
    principal: &Principal,
    sql: &str,
    rows: u64,
    started: Instant,
    outcome: QueryOutcome,
    detail: &str,
) {
    let elapsed = started.elapsed();
    metrics.query(principal.role, outcome, elapsed.as_secs_f64());
    info!(
        target: "proxima::query",
        user = %principal.name,
        role = %principal.role,
        statement = sql,
        rows,
        duration_ms = elapsed.as_millis() as u64,
        outcome = outcome.name(),
        detail = (!detail.is_empty()).then_some(detail),
        "query"
    );
}

/// A result stream that stops at the query timeout and logs the query when it ends
/// (finished, failed, timed out, or dropped because the client went away).
struct LoggedStream {
    inner: Pin<Box<dyn Stream<Item = datafusion::error::Result<RecordBatch>> + Send>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    cancelled: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    registry: Arc<Mutex<Running>>,
    ticket: RunKey,
    principal: Principal,
    sql: String,
    started: Instant,
    rows: u64,
    timeout: Duration,
    /// How it ended, and the error's words if it failed.
    outcome: Option<(QueryOutcome, String)>,
    audit: AuditLog,
    metrics: ServiceMetrics,
    /// The span of the call that started it (its request id), for the line logged at the end.
    span: tracing::Span,
    /// The audit record of the outcome, completed and written when the stream ends.
    done: Option<Record>,
    /// Bytes sent to the client, counted where the Flight messages leave.
    bytes: Arc<AtomicU64>,
}

impl Stream for LoggedStream {
    type Item = Result<RecordBatch, FlightError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.outcome.is_some() {
            return Poll::Ready(None);
        }
        if self.cancelled.as_mut().poll(cx).is_ready() {
            self.outcome = Some((QueryOutcome::Cancelled, String::new()));
            let status = Status::cancelled(
                "query cancelled: by CancelQuery, or its login ended (the user was removed or changed)",
            );
            return Poll::Ready(Some(Err(FlightError::Tonic(Box::new(status)))));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let message = format!(
                "query stopped: it ran longer than the {} s query timeout",
                self.timeout.as_secs()
            );
            self.outcome = Some((QueryOutcome::Timeout, message.clone()));
            return Poll::Ready(Some(Err(FlightError::Tonic(Box::new(Status::deadline_exceeded(
                message,
            ))))));
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                self.rows += batch.num_rows() as u64;
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                let detail = e.to_string();
                let status = query_status(e);
                self.outcome = Some((outcome_of(&status), detail));
                Poll::Ready(Some(Err(FlightError::Tonic(Box::new(status)))))
            }
            Poll::Ready(None) => {
                self.outcome = Some((QueryOutcome::Ok, String::new()));
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for LoggedStream {
    fn drop(&mut self) {
        let _span = self.span.clone().entered();
        // A stream dropped before its end: the client went away or stopped reading.
        let (outcome, detail) = self.outcome.take().unwrap_or((QueryOutcome::Cancelled, String::new()));
        log_query(
            &self.metrics,
            &self.principal,
            &self.sql,
            self.rows,
            self.started,
            outcome,
            &detail,
        );
        if let Some(mut done) = self.done.take() {
            done.rows = Some(self.rows);
            done.bytes = Some(self.bytes.load(Ordering::Relaxed));
            done.duration_ms = Some(self.started.elapsed().as_millis() as u64);
            if outcome != QueryOutcome::Ok {
                done.error = Some(match detail.is_empty() {
                    true => outcome.name().to_string(),
                    false => format!("{}: {detail}", outcome.name()),
                });
            }
            self.audit.submit(done);
        }
        if let Ok(mut running) = self.registry.lock() {
            running.remove(&self.ticket);
        }
    }
}

/// Who is calling and from where: what every audit record of a call starts from.
#[derive(Clone)]
struct Caller {
    session: Arc<TokenSession>,
    client: Option<String>,
}

impl Caller {
    fn record(&self, phase: Phase, action: &str, decision: Decision, rule: &str) -> Record {
        let principal = &self.session.principal;
        let mut record = Record::new(
            phase,
            principal.name.clone(),
            principal.role.name(),
            action,
            decision,
            rule,
        );
        record.issuer = principal.issuer.clone();
        record.client = self.client.clone();
        record.session = Some(self.session.id.clone());
        // Read in place: every record would otherwise copy the whole session state.
        let purpose = self
            .session
            .ctx
            .state_ref()
            .read()
            .config()
            .options()
            .extensions
            .get::<proxima_udfs::ProximaOptions>()
            .map(|o| o.purpose.clone())
            .unwrap_or_default();
        record.purpose = (!purpose.is_empty()).then_some(purpose);
        record
    }
}

/// The purpose a tracer's `SET proxima.purpose = '…'` declares (not a reset to none).
fn declared_purpose<'a>(principal: &proxima_engine::Principal, plan: &'a LogicalPlan) -> Option<&'a str> {
    match plan {
        LogicalPlan::Statement(Statement::SetVariable(set))
            if principal.role == proxima_engine::Role::Tracer
                && set.variable.eq_ignore_ascii_case("proxima.purpose")
                && !set.value.trim().is_empty() =>
        {
            Some(&set.value)
        }
        _ => None,
    }
}

/// How many planned statements a login keeps redeemable (each ticket can be fetched again
/// until it is this far behind).
pub const STATEMENTS_KEPT: usize = 1_000;

/// At most this much SQL text is kept for a login's tickets (the oldest go first).
pub const STATEMENT_BYTES_KEPT: usize = 16 << 20;

/// The gRPC header a client may declare its purpose in, instead of `SET proxima.purpose`.
/// The most bytes of bound parameters one `DoPut` may send (parameters are values, not data).
pub const PARAMETER_BYTES: usize = 16 << 20;

const PURPOSE_HEADER: &str = "x-proxima-purpose";

/// The `done` record of a metadata call, and when it started.
struct Outcome {
    done: Record,
    started: Instant,
}

impl TokenSession {
    /// Whether the users file still has this login's user with the entry it logged in with.
    fn stands(&self, users: &Users) -> bool {
        match self.stamp {
            Some(stamp) => users.stamp(&self.principal.name) == Some((self.principal.role, stamp)),
            None => true,
        }
    }
}

/// Ends a login removed from the tokens: its running queries are cancelled.
fn end_login(session: &TokenSession, running: &Mutex<Running>, why: &str) {
    info!(target: "proxima::auth", user = %session.principal.qualified_name(), login = %session.id,
        "login ended: {why}");
    if let Ok(running) = running.lock() {
        for (key, cancel) in running.iter() {
            if key.login == session.id {
                let _ = cancel.send(true);
            }
        }
    }
}

/// After each reload of the users file that changed something, ends every login that no
/// longer stands; returns once the service is gone.
async fn end_stale_logins(
    users: Users,
    tokens: std::sync::Weak<Mutex<HashMap<String, Arc<TokenSession>>>>,
    running: std::sync::Weak<Mutex<Running>>,
) {
    let mut changes = users.changes();
    while changes.changed().await.is_ok() {
        let (Some(tokens), Some(running)) = (tokens.upgrade(), running.upgrade()) else {
            return;
        };
        let ended: Vec<Arc<TokenSession>> = match tokens.lock() {
            Ok(mut tokens) => {
                let stale: Vec<String> = tokens
                    .iter()
                    .filter(|(_, session)| !session.stands(&users))
                    .map(|(token, _)| token.clone())
                    .collect();
                stale.iter().filter_map(|token| tokens.remove(token)).collect()
            }
            Err(_) => return,
        };
        for session in &ended {
            end_login(
                session,
                &running,
                "the user was removed, or their role or password changed",
            );
        }
    }
}

/// The most sessions one identity provider subject keeps at once (each token, and each
/// role a token's calls name, has its own): a new one ends the oldest.
const MAX_PROVIDER_SESSIONS: usize = 16;

/// At most this much of a refused login's user name goes into the audit record.
const MAX_AUDITED_NAME: usize = 64;

/// Decodes `Basic <base64(user:password)>`, accepting base64 with or without padding.
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ")?.trim().trim_end_matches('=');
    let decoded = base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The answer of a handshake that logged in: `token` as the payload and as the
/// `authorization: Bearer` header clients read it from.
#[allow(clippy::type_complexity)]
fn handshake_answer(
    token: String,
) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
    let value = format!("Bearer {token}").parse().map_err(internal)?;
    let response = HandshakeResponse {
        protocol_version: 0,
        payload: token.into(),
    };
    let mut response = Response::new(Box::pin(futures::stream::once(async move { Ok(response) }))
        as Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>);
    response.metadata_mut().insert("authorization", value);
    Ok(response)
}

fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl FlightSqlService for FlightSqlServer {
    type FlightService = FlightSqlServer;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        let client = request.remote_addr().map(|a| a.to_string());
        let login = |principal: &str, role: &str, decision: Decision, rule: &str| {
            let mut record = Record::new(Phase::Decision, principal, role, "flight:Handshake", decision, rule);
            record.client = client.clone();
            record
        };
        // An identity provider's token needs no handshake; a client that makes one anyway
        // gets the token back as its bearer token.
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        if let Some(token) = bearer
            && self.options.oidc.is_some()
        {
            self.session(&request).await?;
            return handshake_answer(token);
        }
        let credentials = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("no credentials: send 'authorization: Basic …'"))
            .and_then(|header| {
                header
                    .to_str()
                    .map_err(|_| Status::unauthenticated("the authorization header is not text"))
            })
            .and_then(|header| {
                basic_credentials(header)
                    .ok_or_else(|| Status::unauthenticated("expected 'authorization: Basic <base64 of user:password>'"))
            });
        let (user, password) = match credentials {
            Ok(credentials) => credentials,
            Err(status) => {
                let mut record = login("", "", Decision::Deny, "no credentials");
                record.error = Some(status.message().to_string());
                self.audit(record).await?;
                return Err(status);
            }
        };
        let address = request.remote_addr().map(|a| a.ip());
        let principal = match self.options.logins.verify(&self.users, address, &user, &password).await {
            Ok(principal) => principal,
            Err(refused) => {
                let name: String = user.chars().take(MAX_AUDITED_NAME).collect();
                warn!(target: "proxima::auth", user = name, client = ?client, %refused, "login not checked");
                let mut record = login(&name, "", Decision::Deny, "login limits");
                record.error = Some(refused.to_string());
                self.audit(record).await?;
                let mut status = match refused {
                    LoginRefused::Throttled { .. } => Status::resource_exhausted(refused.to_string()),
                    LoginRefused::Busy => Status::unavailable(refused.to_string()),
                };
                if let Ok(value) = refused.retry_after().as_secs().to_string().parse() {
                    status.metadata_mut().insert("retry-after", value);
                }
                return Err(status);
            }
        };
        let Some((principal, stamp)) = principal else {
            warn!(target: "proxima::auth", user, client = ?client, "login refused: wrong user name or password");
            let name: String = user.chars().take(MAX_AUDITED_NAME).collect();
            let mut record = login(&name, "", Decision::Deny, "password");
            record.error = Some("wrong user name or password".into());
            self.audit(record).await?;
            return Err(Status::unauthenticated("wrong user name or password"));
        };
        if !principal.role.may_query() {
            let mut record = login(
                &principal.name,
                principal.role.name(),
                Decision::Deny,
                "role without SQL",
            );
            record.error = Some("the role has no SQL access".into());
            self.audit(record).await?;
            return Err(Status::permission_denied(format!(
                "role {} has no SQL access: it uses its REST routes",
                principal.role
            )));
        }
        // The login stands on the entry its password was checked against: if the file
        // changed meanwhile, its next call finds out.
        let ctx = self.factory.session_for(&principal).await.map_err(internal)?;
        let token = new_token();
        let id = uuid::Uuid::new_v4().to_string();
        let mut record = login(&principal.name, principal.role.name(), Decision::Allow, "password");
        record.session = Some(id.clone());
        // The login exists only once it is recorded.
        self.audit(record).await?;
        {
            let mut tokens = self.tokens.lock().map_err(internal)?;
            let now = Instant::now();
            tokens.retain(|_, s| s.expires > now);
            tokens.insert(
                token.clone(),
                Arc::new(TokenSession {
                    principal: principal.clone(),
                    id,
                    ctx,
                    expires: now + self.options.token_ttl,
                    stamp: Some(stamp),
                    statements: Mutex::new(std::collections::VecDeque::new()),
                    prepared: Mutex::new(HashMap::new()),
                    statement_objects: Mutex::new(HashMap::new()),
                }),
            );
        }
        info!(target: "proxima::auth", user = %principal.name, role = %principal.role, "logged in");
        handshake_answer(token)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request).await?;
        let session = Arc::clone(&caller.session);
        let plan = self
            .plan_only(&caller, "flight:GetFlightInfoStatement", &query.query)
            .await?;
        let schema = plan.schema().as_arrow().clone();
        // A `SET` takes effect now, not when its ticket is fetched: a client may never fetch
        // the empty result of a statement it ran for its effect (ADBC's `execute` fetches in
        // the background, and a next `execute` may cancel that first).
        let statement = if matches!(plan, LogicalPlan::Statement(Statement::SetVariable(_))) {
            self.update(caller, "flight:GetFlightInfoStatement", query.query, Vec::new())
                .await?;
            None
        } else {
            Some(query.query)
        };
        let handle = uuid::Uuid::new_v4().as_bytes().to_vec();
        {
            let mut statements = session.statements.lock().map_err(internal)?;
            // Bounded in number and in bytes (a statement may be megabytes of text).
            let size = |sql: &Option<String>| sql.as_ref().map_or(0, String::len);
            let mut kept: usize = statements.iter().map(|(_, sql)| size(sql)).sum();
            while statements.len() >= STATEMENTS_KEPT || kept + size(&statement) > STATEMENT_BYTES_KEPT {
                match statements.pop_front() {
                    Some((_, sql)) => kept -= size(&sql),
                    None => break,
                }
            }
            statements.push_back((handle.clone(), statement));
        }
        let ticket = TicketStatementQuery {
            statement_handle: handle.into(),
        };
        let info = self.flight_info(&schema, ticket.as_any().encode_to_vec(), request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let caller = self.caller(&request).await?;
        let sql = caller
            .session
            .statements
            .lock()
            .map_err(internal)?
            .iter()
            .find(|(handle, _)| *handle == ticket.statement_handle)
            .map(|(_, sql)| sql.clone())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "unknown statement ticket: a ticket is good only for the login that planned the statement, and \
                     only for the last {STATEMENTS_KEPT} it planned; plan it again"
                ))
            })?;
        let Some(sql) = sql else {
            // A `SET`, already in effect: no rows, nothing run again.
            let empty = FlightDataEncoderBuilder::new()
                .with_schema(Arc::new(Schema::empty()))
                .build(futures::stream::empty())
                .map_err(|e| Status::internal(e.to_string()));
            return Ok(Response::new(Box::pin(empty)));
        };
        let ticket = request.into_inner().ticket.to_vec();
        self.run(caller, "flight:DoGetStatement", sql, Vec::new(), ticket).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let caller = self.caller(&request).await?;
        let session = Arc::clone(&caller.session);
        let plan = self
            .plan_only(&caller, "flight:CreatePreparedStatement", &query.query)
            .await?;
        let dataset_schema = plan.schema().as_arrow().clone();
        let parameter_schema = parameter_schema(&plan)?;
        let handle = uuid::Uuid::new_v4().to_string();
        session.prepared.lock().map_err(internal)?.insert(
            handle.clone(),
            Prepared {
                sql: query.query,
                parameters: Vec::new(),
            },
        );
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into_bytes().into(),
            dataset_schema: schema_bytes(&dataset_schema)?,
            parameter_schema: schema_bytes(&parameter_schema)?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let session = self.session(&request).await?;
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).into_owned();
        session.prepared.lock().map_err(internal)?.remove(&handle);
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let session = self.session(&request).await?;
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).into_owned();
        // Each message is checked before arrow-ipc decodes it (it panics on damaged ones, and
        // would allocate what compressed buffers declare), and the whole is bounded.
        let mut received = 0usize;
        let mut vetter = proxima_engine::ipc::IpcVetter::default();
        let vetted = request.into_inner().map(move |data| {
            let data = data?;
            received = received.saturating_add(data.data_header.len() + data.data_body.len());
            if received > PARAMETER_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "bound parameters larger than {} MiB",
                    PARAMETER_BYTES >> 20
                )));
            }
            if !data.data_header.is_empty() {
                vetter
                    .check(&data.data_header, data.data_body.len())
                    .map_err(|refusal| {
                        Status::invalid_argument(format!("cannot read the bound parameters: {refusal}"))
                    })?;
            }
            Ok(data)
        });
        let parameters: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(vetted.map_err(FlightError::from))
                .try_collect()
                .await
                .map_err(|e| match e {
                    // The client's stream failed, or a check above refused it: its status as it is.
                    FlightError::Tonic(status) => *status,
                    e => Status::invalid_argument(format!("cannot read the bound parameters: {e}")),
                })?;
        let mut prepared = session.prepared.lock().map_err(internal)?;
        let statement = prepared
            .get_mut(&handle)
            .ok_or_else(|| Status::not_found(format!("no prepared statement '{handle}' in this session")))?;
        statement.parameters = parameters;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request).await?;
        let prepared = self.prepared(&caller.session, &query.prepared_statement_handle)?;
        let plan = self
            .plan_only(&caller, "flight:GetFlightInfoPreparedStatement", &prepared.sql)
            .await?;
        let schema = plan.schema().as_arrow().clone();
        let info = self.flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let caller = self.caller(&request).await?;
        let prepared = self.prepared(&caller.session, &query.prepared_statement_handle)?;
        let ticket = request.into_inner().ticket.to_vec();
        self.run(
            caller,
            "flight:DoGetPreparedStatement",
            prepared.sql,
            prepared.parameters,
            ticket,
        )
        .await
    }

    async fn do_put_statement_update(
        &self,
        query: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = self.caller(&request).await?;
        self.update(caller, "flight:DoPutStatementUpdate", query.query, Vec::new())
            .await
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = self.caller(&request).await?;
        let prepared = self.prepared(&caller.session, &query.prepared_statement_handle)?;
        self.update(
            caller,
            "flight:DoPutPreparedStatementUpdate",
            prepared.sql,
            prepared.parameters,
        )
        .await
    }

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        let caller = self.caller(&request).await?;
        let info = FlightInfo::decode(query.info)
            .map_err(|e| Status::invalid_argument(format!("CancelQuery: the info is not a FlightInfo: {e}")))?;
        let mut found = false;
        {
            // One pass over the running queries, however many endpoints the info names.
            let tickets: std::collections::HashSet<&[u8]> = info
                .endpoint
                .iter()
                .filter_map(|e| e.ticket.as_ref())
                .map(|t| t.ticket.as_ref())
                .collect();
            let running = self.running.lock().map_err(internal)?;
            // Only this login's own queries: every run of each ticket.
            for (key, cancel) in running.iter() {
                if key.login == caller.session.id && tickets.contains(key.ticket.as_slice()) {
                    let _ = cancel.send(true);
                    found = true;
                }
            }
        }
        let mut record = caller.record(
            Phase::Decision,
            "flight:CancelQuery",
            Decision::Allow,
            "the login's own query",
        );
        if !found {
            record.error = Some("no running query of this login for this FlightInfo".into());
        }
        self.audit(record).await?;
        if !found {
            return Err(Status::not_found("CancelQuery: no running query for this FlightInfo"));
        }
        Ok(ActionCancelQueryResult {
            result: 1, // CancelResult::Cancelled (the enum is not re-exported by arrow-flight)
        })
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.command_info(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let caller = self.caller(&request).await?;
        let outcome = self.begin(&caller, "flight:GetCatalogs").await?;
        let mut builder = query.into_builder();
        for catalog in caller.session.ctx.catalog_names() {
            builder.append(catalog);
        }
        self.end(outcome, builder.build().map_err(internal))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.command_info(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let caller = self.caller(&request).await?;
        let outcome = self.begin(&caller, "flight:GetDbSchemas").await?;
        let session = &caller.session;
        let mut builder = query.into_builder();
        for catalog_name in session.ctx.catalog_names() {
            if let Some(catalog) = session.ctx.catalog(&catalog_name) {
                for schema in catalog.schema_names() {
                    builder.append(&catalog_name, schema);
                }
            }
        }
        self.end(outcome, builder.build().map_err(internal))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.command_info(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let caller = self.caller(&request).await?;
        let outcome = self.begin(&caller, "flight:GetTables").await?;
        let batch = self.tables_batch(&caller.session, query).await;
        self.end(outcome, batch)
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.command_info(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let caller = self.caller(&request).await?;
        let outcome = self.begin(&caller, "flight:GetTableTypes").await?;
        let mut builder = query.into_builder();
        for table_type in ["LOCAL TEMPORARY", "TABLE", "VIEW"] {
            builder.append(table_type);
        }
        self.end(outcome, builder.build().map_err(internal))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        self.command_info(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let caller = self.caller(&request).await?;
        let outcome = self.begin(&caller, "flight:GetSqlInfo").await?;
        let batch = query.into_builder(&self.sql_info).build().map_err(internal);
        self.end(outcome, batch)
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&self.xdbc_info).schema();
        self.command_info(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<FlightDataStream>, Status> {
        let caller = self.caller(&request).await?;
        let outcome = self.begin(&caller, "flight:GetXdbcTypeInfo").await?;
        let batch = query.into_builder(&self.xdbc_info).build().map_err(internal);
        self.end(outcome, batch)
    }

    async fn do_get_fallback(
        &self,
        request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<FlightDataStream>, Status> {
        self.session(&request).await?;
        Err(Status::unimplemented(format!(
            "Proxima does not serve {} (no keys or Substrait plans)",
            message.type_url
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

impl FlightSqlServer {
    fn prepared(&self, session: &TokenSession, handle: &[u8]) -> Result<Prepared, Status> {
        let handle = String::from_utf8_lossy(handle).into_owned();
        session
            .prepared
            .lock()
            .map_err(internal)?
            .get(&handle)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no prepared statement '{handle}' in this session")))
    }

    /// Runs a statement that returns no rows to the client (`SET`, admin DDL); returns rows affected.
    async fn update(
        &self,
        caller: Caller,
        action: &str,
        sql: String,
        parameters: Vec<RecordBatch>,
    ) -> Result<i64, Status> {
        let ticket = uuid::Uuid::new_v4().as_bytes().to_vec();
        let response = self.run(caller, action, sql, parameters, ticket).await?;
        let mut stream = response.into_inner();
        while stream.try_next().await?.is_some() {}
        Ok(0)
    }
}

/// `$1`, `$2`, … of a plan, typed where DataFusion could infer the type.
fn parameter_schema(plan: &LogicalPlan) -> Result<Schema, Status> {
    let types = plan.get_parameter_types().map_err(query_status)?;
    let mut names: Vec<&String> = types.keys().collect();
    names.sort_by_key(|name| name.trim_start_matches('$').parse::<u32>().unwrap_or(u32::MAX));
    let fields: Vec<Field> = names
        .into_iter()
        .map(|name| Field::new(name, types[name].clone().unwrap_or(DataType::Null), true))
        .collect();
    Ok(Schema::new(fields))
}

fn sql_info() -> Result<SqlInfoData, FlightError> {
    let mut builder = SqlInfoDataBuilder::new();
    builder.append(SqlInfo::FlightSqlServerName, "Proxima");
    builder.append(SqlInfo::FlightSqlServerVersion, proxima_engine::PROXIMA_VERSION);
    builder.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    builder.append(SqlInfo::FlightSqlServerReadOnly, true);
    builder.append(SqlInfo::FlightSqlServerSql, true);
    builder.append(SqlInfo::FlightSqlServerSubstrait, false);
    builder.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    builder.append(SqlInfo::FlightSqlServerCancel, true);
    builder.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    builder.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    builder.append(SqlInfo::SqlDdlCatalog, false);
    builder.append(SqlInfo::SqlDdlSchema, false);
    builder.append(SqlInfo::SqlDdlTable, false);
    // Values of FlightSql.proto's enums, each checked against what DataFusion does by
    // `tests/flight_sql.rs::sql_info_says_what_the_engine_does`.
    // SqlSupportedCaseSensitivity: unquoted identifiers are folded to lower case.
    builder.append(SqlInfo::SqlIdentifierCase, 3i32); // SQL_CASE_SENSITIVITY_LOWERCASE
    builder.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    // Quoted identifiers keep their case and match exactly: the enum has no value for that.
    builder.append(SqlInfo::SqlQuotedIdentifierCase, 0i32); // SQL_CASE_SENSITIVITY_UNKNOWN
    builder.append(SqlInfo::SqlAllTablesAreSelectable, true);
    // SqlNullOrdering: NULL sorts after every value ascending, before them descending.
    builder.append(SqlInfo::SqlNullOrdering, 0i32); // SQL_NULLS_SORTED_HIGH
    builder.append(SqlInfo::SqlSupportsColumnAliasing, true);
    builder.append(SqlInfo::SqlNullPlusNullIsNull, true);
    builder.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    builder.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    builder.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    builder.append(SqlInfo::SqlSupportedGroupBy, 3i32);
    builder.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    builder.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    builder.append(SqlInfo::SqlSchemaTerm, "schema");
    builder.append(SqlInfo::SqlCatalogTerm, "catalog");
    builder.append(SqlInfo::SqlProcedureTerm, "procedure");
    builder.append(SqlInfo::SqlCatalogAtStart, true);
    builder.append(SqlInfo::SqlTransactionsSupported, false);
    // The SQL parser's own keywords (DataFusion's dialect is sqlparser's generic one).
    builder.append(SqlInfo::SqlKeywords, datafusion::sql::sqlparser::keywords::ALL_KEYWORDS);
    builder.append(
        SqlInfo::SqlNumericFunctions,
        &["abs", "ceil", "floor", "round", "power", "sqrt", "ln", "log"] as &[&str],
    );
    builder.append(
        SqlInfo::SqlStringFunctions,
        &["lower", "upper", "trim", "substr", "length", "concat"] as &[&str],
    );
    builder.append(SqlInfo::SqlSystemFunctions, &["now"] as &[&str]);
    builder.append(
        SqlInfo::SqlDatetimeFunctions,
        &["date_trunc", "date_part", "to_timestamp"] as &[&str],
    );
    builder.build()
}

fn xdbc_info() -> Result<XdbcTypeInfoData, FlightError> {
    let mut builder = XdbcTypeInfoDataBuilder::new();
    let types = [
        ("VARCHAR", XdbcDataType::XdbcVarchar, Some("'")),
        ("SMALLINT", XdbcDataType::XdbcSmallint, None),
        ("INTEGER", XdbcDataType::XdbcInteger, None),
        ("BIGINT", XdbcDataType::XdbcBigint, None),
        ("DOUBLE", XdbcDataType::XdbcDouble, None),
        ("BOOLEAN", XdbcDataType::XdbcBit, None),
        ("DATE", XdbcDataType::XdbcDate, Some("DATE '")),
        ("TIMESTAMP", XdbcDataType::XdbcTimestamp, Some("TIMESTAMP '")),
    ];
    for (name, data_type, prefix) in types {
        builder.append(XdbcTypeInfo {
            type_name: name.to_string(),
            data_type,
            column_size: None,
            literal_prefix: prefix.map(str::to_string),
            literal_suffix: prefix.map(|_| "'".to_string()),
            create_params: None,
            nullable: Nullable::NullabilityNullable,
            case_sensitive: data_type == XdbcDataType::XdbcVarchar,
            searchable: Searchable::Full,
            unsigned_attribute: Some(false),
            fixed_prec_scale: false,
            auto_increment: Some(false),
            local_type_name: Some(name.to_string()),
            minimum_scale: None,
            maximum_scale: None,
            sql_data_type: data_type,
            datetime_subcode: None,
            num_prec_radix: None,
            interval_precision: None,
        });
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_with_and_without_padding() {
        // "admin:secret" is YWRtaW46c2VjcmV0 (no padding needed); "ab:c" is YWI6Yw==.
        assert_eq!(
            basic_credentials("Basic YWRtaW46c2VjcmV0"),
            Some(("admin".into(), "secret".into()))
        );
        assert_eq!(basic_credentials("Basic YWI6Yw=="), Some(("ab".into(), "c".into())));
        assert_eq!(basic_credentials("Basic YWI6Yw"), Some(("ab".into(), "c".into())));
        assert_eq!(basic_credentials("Bearer abc"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
    }
}
