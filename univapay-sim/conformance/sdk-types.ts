// The SDK's declared response types the conformance check validates against, named once.
// A token's `data` is a union in the SDK; each payment type gets its own member here, so
// a konbini token is checked against the konbini data type and not against whichever
// member happens to accept it.
import type {
  ChargeExpiry,
  ErrorResponse,
  ResponseCharge,
  ResponseCharges,
  TransactionTokenCardDataItem,
  TransactionTokenConvenienceDataItem,
  TransactionTokenItem,
} from "./node_modules/univapay-node/dist/cjs/index.js";

export type Charge = ResponseCharge;
export type ChargeList = ResponseCharges;
export type Expiry = ChargeExpiry;
export type KonbiniToken = TransactionTokenItem<TransactionTokenConvenienceDataItem>;
export type CardToken = TransactionTokenItem<TransactionTokenCardDataItem>;
export type ApiError = ErrorResponse;
