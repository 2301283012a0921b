package pgwire

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// SQLSTATEs the front door reports (see ARCHITECTURE.md "Errors the client
// sees").
const (
	CodeUnknownBranch       = "3D000" // invalid_catalog_name
	CodeBadRoute            = "08004" // sqlserver_rejected_establishment_of_sqlconnection
	CodeCannotConnectNow    = "57P03" // cannot_connect_now
	CodeTooManyConnections  = "53300" // too_many_connections
	CodeInvalidPassword     = "28P01" // invalid_password
	CodeInvalidAuthSpec     = "28000" // invalid_authorization_specification
	CodeConnectionFailure   = "08006" // connection_failure
	CodeProtocolViolation   = "08P01" // protocol_violation
	CodeFeatureNotSupported = "0A000" // feature_not_supported
	CodeAdminShutdown       = "57P01" // admin_shutdown
	CodeInternalError       = "XX000" // internal_error
)

// Error is an error meant for the client: a SQLSTATE, a message and a hint.
// Everything the front door refuses a client for becomes one of these, and
// is sent as a FATAL ErrorResponse.
type Error struct {
	Code    string
	Message string
	Hint    string
	// Err is the internal cause, for logs only; never sent to the client.
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// Fatal builds the FATAL ErrorResponse for e.
func (e *Error) Fatal() *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                e.Code,
		Message:             e.Message,
		Hint:                e.Hint,
	}
}

// AsClientError turns err into the Error the client should see: an *Error
// as it is, a PostgreSQL error from the compute with its own fields (so a
// missing database reads exactly as PostgreSQL would say it), a
// StartupError, or else an internal error that does not leak details.
func AsClientError(err error) *Error {
	var ce *Error
	if errors.As(err, &ce) {
		return ce
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return &Error{Code: pe.Code, Message: pe.Message, Hint: pe.Hint, Err: err}
	}
	var se *StartupError
	if errors.As(err, &se) {
		return &Error{Code: se.Code, Message: se.Message, Hint: se.Hint, Err: err}
	}
	return &Error{Code: CodeInternalError, Message: "internal error in neonproxy", Hint: "See the neonproxy log for details.", Err: err}
}
