//! The Flight service as served: arrow-flight's Flight SQL dispatch over
//! [`FlightSqlServer`], except that a message the client damaged is the client's mistake.
//!
//! arrow-flight 59 unpacks every ticket, command descriptor and action body into its Flight
//! SQL message before any handler of ours runs. When the bytes name a known message type
//! (say `CommandStatementQuery`) but do not decode as it, the dispatch answers `Internal`
//! with the `Debug` form of an `ArrowError::ParseError` (its private
//! `arrow_error_to_status`), which tells the client the server failed, counts a server error
//! and pages an operator for what is a malformed request (found by the `flight_commands`
//! fuzz target). [`Dispatch`] passes every call through and turns exactly that answer into
//! `InvalidArgument`; our own handlers never word an error that way (they use `Display`).

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, PollInfo, SchemaResult, Ticket,
};
use tonic::{Request, Response, Status, Streaming};

use crate::service::FlightSqlServer;

/// [`FlightSqlServer`] behind arrow-flight's dispatch, with damaged messages refused as
/// `InvalidArgument`.
pub(crate) struct Dispatch(pub(crate) FlightSqlServer);

/// `status`, as `InvalidArgument` if it is arrow-flight's answer to a message it could not
/// unpack.
fn client_mistake(status: Status) -> Status {
    if status.code() == tonic::Code::Internal && status.message().starts_with("ParseError(") {
        Status::with_metadata(
            tonic::Code::InvalidArgument,
            format!("the request's Flight SQL message is damaged: {}", status.message()),
            status.metadata().clone(),
        )
    } else {
        status
    }
}

#[tonic::async_trait]
impl FlightService for Dispatch {
    type HandshakeStream = <FlightSqlServer as FlightService>::HandshakeStream;
    type ListFlightsStream = <FlightSqlServer as FlightService>::ListFlightsStream;
    type DoGetStream = <FlightSqlServer as FlightService>::DoGetStream;
    type DoPutStream = <FlightSqlServer as FlightService>::DoPutStream;
    type DoActionStream = <FlightSqlServer as FlightService>::DoActionStream;
    type ListActionsStream = <FlightSqlServer as FlightService>::ListActionsStream;
    type DoExchangeStream = <FlightSqlServer as FlightService>::DoExchangeStream;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        self.0.handshake(request).await
    }

    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.0.list_flights(request).await
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.0.get_flight_info(request).await.map_err(client_mistake)
    }

    async fn poll_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        self.0.poll_flight_info(request).await.map_err(client_mistake)
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        self.0.get_schema(request).await.map_err(client_mistake)
    }

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        self.0.do_get(request).await.map_err(client_mistake)
    }

    async fn do_put(&self, request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        self.0.do_put(request).await.map_err(client_mistake)
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.0.do_exchange(request).await.map_err(client_mistake)
    }

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        self.0.do_action(request).await.map_err(client_mistake)
    }

    async fn list_actions(&self, request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        self.0.list_actions(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_arrow_flights_unpacking_failure_becomes_the_clients_mistake() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("x-request-id", "r1".parse().unwrap());
        // The exact form arrow-flight 59 gives (`Status::internal(format!("{err:?}"))`).
        let error = arrow::error::ArrowError::ParseError("Unable to decode Any value: buffer underflow".into());
        let unpacking = Status::with_metadata(tonic::Code::Internal, format!("{error:?}"), metadata);
        let status = client_mistake(unpacking);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("buffer underflow"), "{}", status.message());
        assert_eq!(status.metadata().get("x-request-id").unwrap(), "r1");
        // Ours are worded with Display, and stay what they are.
        let ours = Status::internal(error.to_string());
        assert_eq!(client_mistake(ours).code(), tonic::Code::Internal);
        let other = Status::not_found("ParseError(no statement)");
        assert_eq!(client_mistake(other).code(), tonic::Code::NotFound);
    }

    #[test]
    fn the_fuzzers_input_still_fails_arrow_flights_unpacking() {
        // If arrow-flight learns to refuse it itself, this input no longer tests `Dispatch`.
        use prost::Message as _;
        let damaged = include_bytes!("../../fuzz/regressions/flight_commands-damaged-statement-query.bin");
        let any = arrow_flight::sql::Any::decode(&damaged[..]).expect("the Any itself decodes");
        let error = arrow_flight::sql::Command::try_from(any).expect_err("its message does not");
        assert!(format!("{error:?}").starts_with("ParseError("), "{error:?}");
    }
}
