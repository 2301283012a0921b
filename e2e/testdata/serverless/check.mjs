// The serverless driver's paths through neonproxy; prints one JSON object
// that e2e/serverless_test.go checks.
import './neon-config.mjs';
import { neon, Pool } from '@neondatabase/serverless';

const url = process.env.NEONPROXY_URL;
const out = {};
const sql = neon(url);

// neon() over HTTP, with parameters.
out.params = await sql.query('select $1::int + $2::int as sum, $3::text as t, null::int as n', [2, 3, 'hé']);

// A batch runs in one transaction; a failing one leaves nothing behind.
await sql`create table items (id int primary key, v text)`;
const [, counted] = await sql.transaction([
  sql`insert into items values (1, 'a'), (2, 'b')`,
  sql`select count(*)::int as n from items`,
], { isolationLevel: 'Serializable' });
out.batch = counted;
try {
  await sql.transaction([sql`insert into items values (3, 'c')`, sql`select 1 / 0`]);
} catch (e) {
  out.batchError = e.code;
}
out.afterFailedBatch = await sql`select count(*)::int as n from items`;

// A query error carries PostgreSQL's fields.
try {
  await sql`select * from no_such_table`;
} catch (e) {
  out.error = { code: e.code, message: e.message, position: e.position };
}

// Pool over WebSocket: a multi-statement transaction.
const pool = new Pool({ connectionString: url });
const client = await pool.connect();
await client.query('BEGIN');
await client.query('insert into items values (10, $1)', ['over ws']);
await client.query('update items set v = v || $1 where id = 1', ['!']);
const inTx = await client.query('select id, v from items order by id');
await client.query('COMMIT');
client.release();
await pool.end();
out.ws = inTx.rows;

// 50 concurrent HTTP queries to a branch whose compute is stopped.
const cold = neon(process.env.NEONPROXY_COLD_URL);
const many = await Promise.all(Array.from({ length: 50 }, (_, i) => cold.query('select $1::int as i', [i])));
out.cold = many.map((r) => r[0].i);

console.log(JSON.stringify(out));
