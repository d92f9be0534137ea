//! The request codec of the agent's service: prost, except that a request
//! whose bytes do not decode (bad wire format, a string field that is not
//! UTF-8) is the client's fault: INVALID_ARGUMENT with reason
//! MALFORMED_REQUEST (tonic's stock codec says INTERNAL), and an audit line
//! naming the caller and the method.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstCodec;

/// Who is calling which method, set around each call by [`super::Audited`]
/// so the decoder can audit what it refuses.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// As [`super::caller`] names it.
    pub who: String,
    /// The gRPC method path, e.g. "/fan.agent.v1.FanAgentService/AllocateAddress".
    pub method: String,
}

tokio::task_local! {
    /// The call being decoded.
    pub static CALL: CallContext;
}

/// Prost encoding; decoding with [`RequestDecoder`].
#[derive(Debug, Clone)]
pub struct RequestCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        RequestCodec {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(PhantomData)
    }
}

/// Decodes one request message; a decode failure is INVALID_ARGUMENT.
#[derive(Debug)]
pub struct RequestDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|err| {
            let detail = err.to_string();
            let call = CALL.try_with(Clone::clone).unwrap_or_default();
            let what = call.method.rsplit('/').next().unwrap_or_default();
            tracing::info!(
                target: "audit",
                who = %call.who,
                what,
                result = "error",
                error = %crate::error::clip(&detail),
                "malformed request"
            );
            super::status::malformed_request(&detail)
        })
    }
}
