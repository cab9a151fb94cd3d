// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

/// @title PaymentVault: clients pay nodes' quotes in ANT, in batches.
/// @notice Same interface as Autonomi's vault: `payForQuotes(DataPayment[])` moves each
/// payment's tokens from the payer (who approved this vault first) to the node's rewards
/// address, records the payment under its quote hash and emits `DataPaymentMade`.
/// Nodes check `completedPayments(quoteHash)` before they store paid data.
contract PaymentVault {
    using SafeERC20 for IERC20;

    struct DataPayment {
        address rewardsAddress;
        uint256 amount;
        bytes32 quoteHash;
    }

    /// One storage slot per paid quote: an amount above 2^96 - 1 (about 7.9e28, far above
    /// the token's supply) is refused.
    struct CompletedPayment {
        address rewardsAddress;
        uint96 amount;
    }

    /// @notice The most payments one call may carry.
    uint256 public constant MAX_BATCH = 256;

    /// @notice The token payments are made in.
    IERC20 public immutable token;

    mapping(bytes32 quoteHash => CompletedPayment) private _completedPayments;

    event DataPaymentMade(
        address indexed rewardsAddress, uint256 indexed amount, bytes32 indexed quoteHash
    );

    error ZeroTokenAddress();
    error BatchEmpty();
    error BatchTooLarge(uint256 size, uint256 limit);
    error ZeroRewardsAddress(uint256 index);
    error QuoteAlreadyPaid(bytes32 quoteHash);
    error AmountTooLarge(uint256 index);

    constructor(IERC20 token_) {
        if (address(token_) == address(0)) revert ZeroTokenAddress();
        token = token_;
    }

    /// @notice What a quote hash was paid: the zero address and 0 while unpaid.
    function completedPayments(bytes32 quoteHash)
        external
        view
        returns (address rewardsAddress, uint256 amount)
    {
        CompletedPayment storage done = _completedPayments[quoteHash];
        return (done.rewardsAddress, done.amount);
    }

    /// @notice Pays each quote: `amount` tokens from the caller to `rewardsAddress`.
    function payForQuotes(DataPayment[] calldata payments) external {
        uint256 count = payments.length;
        if (count == 0) revert BatchEmpty();
        if (count > MAX_BATCH) revert BatchTooLarge(count, MAX_BATCH);
        for (uint256 i = 0; i < count; ++i) {
            DataPayment calldata payment = payments[i];
            if (payment.rewardsAddress == address(0)) revert ZeroRewardsAddress(i);
            if (payment.amount > type(uint96).max) revert AmountTooLarge(i);
            CompletedPayment storage done = _completedPayments[payment.quoteHash];
            if (done.rewardsAddress != address(0)) revert QuoteAlreadyPaid(payment.quoteHash);
            _completedPayments[payment.quoteHash] = CompletedPayment(
                payment.rewardsAddress, uint96(payment.amount)
            );
            token.safeTransferFrom(msg.sender, payment.rewardsAddress, payment.amount);
            emit DataPaymentMade(payment.rewardsAddress, payment.amount, payment.quoteHash);
        }
    }
}
