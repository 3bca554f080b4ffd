//! One call of a Lua script: `EVALSHA` built in one command buffer.

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};

/// Arguments a single-key call's buffer holds before growing: `EVALSHA`, digest, key
/// count and key, then the longest call's own (a penalty's five).
const MAX_ARGS: usize = 9;
/// Bytes a call's buffer holds before growing.
const BUFFER_BYTES: usize = 1024;

/// `EVALSHA {digest} 1 {key} {args…}` of a script, loaded into Redis first when Redis
/// answers `NOSCRIPT` (after a restart or a failover, which keep no scripts).
///
/// Every argument is written straight into the command's one buffer: redis'
/// `ScriptInvocation` keeps each in a `Vec` of its own before copying them all into a
/// command (one allocation per argument).
pub(crate) struct ScriptCall<'a> {
    script: &'a Script,
    cmd: Cmd,
}

impl<'a> ScriptCall<'a> {
    /// A call of `script` on the one key `key`.
    pub(crate) fn new(script: &'a Script, key: impl ToRedisArgs) -> Self {
        // Room for the longest call (a session swap: two records) without regrowing.
        let mut cmd = Cmd::with_capacity(MAX_ARGS, BUFFER_BYTES);
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(1).arg(key);
        ScriptCall { script, cmd }
    }

    /// A call of `script` on `keys`, with room for `args` arguments after them.
    pub(crate) fn with_keys<'k>(
        script: &'a Script,
        keys: impl ExactSizeIterator<Item = &'k str>,
        args: usize,
    ) -> Self {
        let count = keys.len();
        // Keys of about 60 bytes, arguments of up to 20 digits, each with its header.
        let mut cmd = Cmd::with_capacity(3 + count + args, BUFFER_BYTES.max(80 * count + 24 * args));
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(count);
        for key in keys {
            cmd.arg(key);
        }
        ScriptCall { script, cmd }
    }

    /// Appends an argument (`ARGV[n]`, in order).
    pub(crate) fn arg(mut self, arg: impl ToRedisArgs) -> Self {
        self.cmd.arg(arg);
        self
    }

    /// Runs the call.
    pub(crate) async fn invoke<T: FromRedisValue>(self, con: &mut impl ConnectionLike) -> RedisResult<T> {
        match self.cmd.query_async(con).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script.prepare_invoke().load_async(con).await?;
                self.cmd.query_async(con).await
            }
            answer => answer,
        }
    }
}
