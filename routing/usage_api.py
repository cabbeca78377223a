"""GET /api/v1/usage: the calling key's limits, its spend today and this month, and what is left."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routing.models import ApiKey
from routing.serializers import ErrorSerializer
from routing.services.limits import period_resets_at, spend_summary
from scope_site.renderers import api_time


class PeriodSerializer(serializers.Serializer):
    period = serializers.ChoiceField(choices=["day", "month"])
    start = serializers.DateField()
    resets_at = serializers.DateTimeField()
    budget_usd = serializers.FloatField(allow_null=True)
    spent_usd = serializers.FloatField()
    reserved_usd = serializers.FloatField(help_text="Predicted cost of calls in flight")
    remaining_usd = serializers.FloatField(allow_null=True)


class UsageOutputSerializer(serializers.Serializer):
    api_key = serializers.CharField()
    rpm_limit = serializers.IntegerField(allow_null=True)
    periods = PeriodSerializer(many=True)


class UsageApi(APIView):
    """The calling API key's budgets and spend (UTC day and month), as enforced at admission."""

    @extend_schema(operation_id="usage", responses={200: UsageOutputSerializer, 401: ErrorSerializer})
    def get(self, request: Request) -> Response:
        key = request.auth
        assert isinstance(key, ApiKey)  # BearerApiKeyAuthentication + IsAuthenticated guarantee it
        periods = []
        for item in spend_summary(api_key=key):
            remaining = None
            if item.budget_usd is not None:
                remaining = max(0.0, float(item.budget_usd - item.spent_usd - item.reserved_usd))
            periods.append(
                {
                    "period": item.period,
                    "start": item.period_start.isoformat(),
                    "resets_at": api_time(period_resets_at(item.period, item.period_start)),
                    "budget_usd": None if item.budget_usd is None else float(item.budget_usd),
                    "spent_usd": float(item.spent_usd),
                    "reserved_usd": float(item.reserved_usd),
                    "remaining_usd": remaining,
                }
            )
        return Response({"api_key": key.name, "rpm_limit": key.rpm_limit, "periods": periods})
