from django.db import models


class Seminar(models.Model):
    title = models.CharField(max_length=100)
    capacity = models.IntegerField()
    seats_taken = models.IntegerField(default=0)


class Participant(models.Model):
    seminar = models.ForeignKey(Seminar, on_delete=models.CASCADE, related_name="participants")
    name = models.CharField(max_length=100)

    class Meta:
        unique_together = [("seminar", "name")]


class Counter(models.Model):
    key = models.CharField(max_length=50, unique=True)
    value = models.IntegerField(default=0)
