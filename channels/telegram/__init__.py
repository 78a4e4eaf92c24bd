"""Telegram (aiogram 3): webhook or long polling, bounded parsing, sending."""
