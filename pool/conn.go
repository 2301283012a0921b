package pool

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Exec runs sql as a simple query on an idle connection, reading every
// reply up to ReadyForQuery; ParameterStatus updates land in c.Params. It
// returns the first ErrorResponse as a *pgconn.PgError and the final
// transaction status.
func (c *Conn) Exec(ctx context.Context, sql string) (byte, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.Net.SetDeadline(dl)
		defer c.Net.SetDeadline(time.Time{})
	}
	q, err := (&pgproto3.Query{String: sql}).Encode(nil)
	if err != nil {
		return 0, err
	}
	if _, err := c.Net.Write(q); err != nil {
		return 0, fmt.Errorf("pool exec: %w", err)
	}
	// The frontend reads only until ReadyForQuery, after which an idle
	// backend sends nothing, so its buffer holds nothing when we return.
	fe := pgproto3.NewFrontend(c.Net, nil)
	var firstErr error
	for {
		msg, err := fe.Receive()
		if err != nil {
			return 0, fmt.Errorf("pool exec: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.ParameterStatus:
			c.SetParam(m.Name, m.Value)
		case *pgproto3.ErrorResponse:
			if firstErr == nil {
				firstErr = pgconn.ErrorResponseToPgError(m)
			}
		case *pgproto3.ReadyForQuery:
			return m.TxStatus, firstErr
		}
	}
}

// SetParam records a ParameterStatus.
func (c *Conn) SetParam(name, value string) {
	if c.Params == nil {
		c.Params = map[string]string{}
	}
	c.Params[name] = value
	c.Synced = ""
}

// Reset returns a session-mode connection to a clean state before reuse:
// it rolls back an open transaction and runs DISCARD ALL (which also drops
// prepared statements, temporary tables, LISTENs and advisory locks).
func (c *Conn) Reset(ctx context.Context, txStatus byte) error {
	if txStatus != 'I' {
		if _, err := c.Exec(ctx, "ROLLBACK"); err != nil {
			return err
		}
	}
	st, err := c.Exec(ctx, "DISCARD ALL")
	if err != nil {
		return err
	}
	if st != 'I' {
		return fmt.Errorf("pool reset: transaction status %q after DISCARD ALL", st)
	}
	if c.Prepared != nil {
		c.Prepared.Clear()
	}
	return nil
}
