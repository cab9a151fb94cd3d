// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title The Autonomi Network Token (ANT), as the local testnet deploys it.
/// @notice A plain ERC-20 with 18 decimals; the whole supply is minted once, to `holder`.
contract Token is ERC20 {
    constructor(address holder, uint256 initialSupply) ERC20("Autonomi Network Token", "ANT") {
        _mint(holder, initialSupply);
    }
}
